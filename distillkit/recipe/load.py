"""From a TOML file (or a dict) to a recipe whose every name is resolved, reporting all problems at once.

The path is ``read_toml`` → ``apply_overrides`` (``--set a.b=c``) → ``validate_structure`` (stage 1, the
pydantic schema) → ``resolve`` (stage 2, the plugin registry and the checks that need no model). All the
problems found go into a single :class:`~distillkit.errors.RecipeError`, so one ``distillkit validate``
shows the whole list instead of one fix per run; stage 2 also runs, over whatever is well-formed, when
stage 1 failed. Each problem names the field in the recipe's own words (``losses[1].params.scale``), the
bad value, and the fix. Nothing here loads a model: a recipe can be checked on a laptop before a GPU job
is queued.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic

from distillkit.errors import RecipeError
from distillkit.recipe.messages import format_validation_error
from distillkit.recipe.overrides import apply_overrides
from distillkit.recipe.problems import Problem, unique
from distillkit.recipe.resolve import ResolvedCritic, ResolvedLoss, ResolvedRecipe, resolve, resolve_partial
from distillkit.recipe.schema import Recipe
from distillkit.recipe.toml_io import dump_recipe, dump_resolved, read_toml

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.registry import Registry

__all__ = [
    "ResolvedCritic", "ResolvedLoss", "ResolvedRecipe", "apply_overrides", "dump_recipe", "dump_resolved",
    "format_validation_error", "load_recipe", "read_toml", "resolve", "validate_structure",
]


def _lists(value):
    """Python tuples as lists: a TOML file only has lists, and strict validation would refuse a tuple that an
    embedding program passes (``"timesteps": (999, 499)``)."""
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def validate_structure(data: Mapping, source: str | Path | None = None) -> Recipe:
    """Stage 1: the pydantic schema. Raises one RecipeError with a problem per mistake."""
    where = None if source is None else str(source)
    if not isinstance(data, Mapping):
        raise RecipeError([Problem("(recipe)", f"a recipe must be a table of sections, got {type(data).__name__}")],
                          where)
    try:
        return Recipe.model_validate(_lists(data))
    except pydantic.ValidationError as exc:
        raise RecipeError(format_validation_error(exc, Recipe), where) from None


def load_recipe(path_or_dict: str | Path | Mapping, overrides: Sequence[str] = (), registry: "Registry | None" = None,
                *, base_dir: str | Path | None = None, check_environment: bool = True) -> ResolvedRecipe:
    """Read, override, validate and resolve a recipe. A dict is taken as already-parsed TOML (embedding);
    its relative paths are then taken from ``base_dir`` (default: the working directory).

    ``check_environment=False`` skips the checks of this machine and file system (devices, the output
    folder, a resume path): for a recipe read back from a run folder written elsewhere, to sample it.
    """
    if isinstance(path_or_dict, Mapping):
        source, data = None, copy.deepcopy(dict(path_or_dict))
    else:
        source, data = Path(path_or_dict), read_toml(path_or_dict)
    where = None if source is None else str(source)
    if overrides:
        try:
            data = apply_overrides(data, overrides)
        except RecipeError as exc:
            raise RecipeError(exc.problems, where) from None
    if registry is None:
        from distillkit.registry import Registry

        registry = Registry.discover()
    try:
        recipe = validate_structure(data, source)
    except RecipeError as exc:
        later = (resolve_partial(_lists(data), registry, check_environment=check_environment)
                 if isinstance(data, Mapping) else [])
        raise RecipeError(unique([*exc.problems, *later]), where) from None
    return resolve(recipe, registry, source=source, base_dir=base_dir, check_environment=check_environment)
