"""Stage 2: every name in the recipe looked up in the plugin registry, every ``params`` table validated by its
plugin's Config, every loss bound to its critics, and the checks that need no model.

It also runs on a recipe that failed stage 1 (:func:`resolve_partial`), over whatever entries are
well-formed on their own, so one ``distillkit validate`` shows a misspelt loss beside a missing
``model.pretrained`` instead of one after the other.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pydantic

from distillkit.errors import PluginError, RecipeError
from distillkit.recipe.binding import bind_critics, critic_roles
from distillkit.recipe.checks import (
    critic_problems, device_problems, machine_and_folder_problems, model_problems, output_dir_problems,
    resume_problems,
)
from distillkit.recipe.messages import format_validation_error
from distillkit.recipe.problems import Problem, unique
from distillkit.recipe.schema import CriticEntry, LossEntry, Recipe, SampleConfig

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.losses.base import Loss
    from distillkit.models.backbone import Backbone
    from distillkit.registry import Registry
    from distillkit.roles.critic import Critic


@dataclass
class ResolvedLoss:
    entry: LossEntry
    cls: type["Loss"]
    config: pydantic.BaseModel  # the loss's validated ``params``
    critic_ids: dict[str, str] = field(default_factory=dict)  # critic role -> critic instance id

    @property
    def critic_id(self) -> Optional[str]:
        """The id of the loss's one critic; None when it has no critic role *or several* (read ``critic_ids``)."""
        return next(iter(self.critic_ids.values())) if len(self.critic_ids) == 1 else None


@dataclass
class ResolvedCritic:
    entry: CriticEntry
    cls: type["Critic"]
    config: pydantic.BaseModel
    id: str


@dataclass
class ResolvedRecipe:
    """A recipe with every name looked up and every ``params`` table validated; still no model loaded."""

    recipe: Recipe
    source: Optional[Path]
    base_dir: Path  # folder relative paths in the recipe are taken from
    backbone_cls: type["Backbone"]
    losses: list[ResolvedLoss] = field(default_factory=list)
    critics: list[ResolvedCritic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # asset problems: fatal for `run`, shown by `validate`

    def critic(self, critic_id: str) -> ResolvedCritic:
        for c in self.critics:
            if c.id == critic_id:
                return c
        raise KeyError(f"no critic with id {critic_id!r} (ids: {[c.id for c in self.critics]})")


# -- names ---------------------------------------------------------------------------------------------
def _registration_hint(registry: "Registry", kind: str, name: str | None = None) -> str:
    """Why a name may be missing: the registration problems of its plugin (or, for a family, of any
    plugin's backbone registration). Not raised at discovery, so one broken plugin spoils no other recipe."""
    plugin = name.split(".", 1)[0] if name and "." in name else None
    related = [p for p in registry.problems if kind in p and (plugin is None or f"plugin {plugin!r}" in p)]
    return "".join(f"; {p}" for p in related)


def _users_of(registry: "Registry", critic: str) -> list[str]:
    users = []
    for name, cls in registry.losses.items():
        try:
            if critic in cls.critic_roles().values():
                users.append(name)
        except (TypeError, ValueError):
            continue
    return sorted(users)


def _misplaced(kind: str, name: str, registry: "Registry") -> Optional[str]:
    """The message for a name registered as something else, or written as a file path."""
    if kind != "critic" and name in registry.critics:
        users = _users_of(registry, name)
        trained = f", and add a loss that trains it, e.g. [[losses]] name = \"{users[0]}\"" if users else ""
        return f"{name!r} is a critic, not a {kind}: declare it as [[critics]] name = \"{name}\"{trained}"
    if kind != "loss" and name in registry.losses:
        return f"{name!r} is a loss, not a {kind}: list it as [[losses]] name = \"{name}\""
    if kind != "model family" and name in registry.backbones:
        return f"{name!r} is a model family, not a {kind}: set model.family = \"{name}\""
    if "/" in name or "\\" in name or name.endswith(".py"):
        table = {"loss": registry.losses, "critic": registry.critics}.get(kind, registry.backbones)
        return (f"{name!r} looks like a file path, but a {kind} is named by its plugin and name as "
                f"`distillkit plugins` lists them (known: {', '.join(sorted(table)) or 'none'})")
    return None


def _look_up(kind: str, name: str, path: str, registry: "Registry", problems: list[Problem]) -> Optional[type]:
    getter = {"loss": registry.loss, "critic": registry.critic, "model family": registry.backbone}[kind]
    if name not in {"loss": registry.losses, "critic": registry.critics, "model family": registry.backbones}[kind]:
        misplaced = _misplaced(kind, name, registry)
        if misplaced:
            problems.append(Problem(path, misplaced))
            return None
    try:
        return getter(name)
    except PluginError as exc:
        hint = _registration_hint(registry, "backbone" if kind == "model family" else kind, name)
        problems.append(Problem(path, f"{exc}{hint}"))
        return None


def _params(cls: type, params: dict, path: str, problems: list[Problem]) -> Optional[pydantic.BaseModel]:
    try:
        return cls.Config.model_validate(params)
    except pydantic.ValidationError as exc:
        problems.extend(format_validation_error(exc, cls.Config, f"{path}.params"))
        return None


def _weight_problems(i: int, entry: LossEntry, cls: type["Loss"]) -> list[Problem]:
    """A phase weight on a loss without a term in that phase does nothing: the user meant something else."""
    problems = []
    if entry.critic_weight != 1.0 and not cls.has_critic_term():
        problems.append(Problem(f"losses[{i}].critic_weight", f"{entry.name!r} has no critic term, so a "
                                                              f"critic-phase weight has no effect: remove it"))
    if entry.weight != 1.0 and not cls.has_generator_term():
        problems.append(Problem(f"losses[{i}].weight", f"{entry.name!r} has no generator term (it only trains its "
                                                       f"critics), so the generator-phase weight has no effect: "
                                                       f"remove it, or set losses[{i}].critic_weight"))
    return problems


@dataclass
class _Entries:
    """What name and params resolution found for the critic and loss entries that are well-formed."""

    critics: dict[int, ResolvedCritic] = field(default_factory=dict)  # index -> resolved (config valid)
    unknown_critics: set[int] = field(default_factory=set)
    losses: dict[int, ResolvedLoss] = field(default_factory=dict)  # index -> resolved (config valid)
    roles: list[tuple[int, LossEntry, Optional[dict[str, str]]]] = field(default_factory=list)


def _resolve_entries(critics: list[tuple[int, CriticEntry]], losses: list[tuple[int, LossEntry]],
                     has_images: Optional[bool], registry: "Registry", problems: list[Problem]) -> _Entries:
    out = _Entries()
    for j, entry in critics:
        cls = _look_up("critic", entry.name, f"critics[{j}].name", registry, problems)
        if cls is None:
            out.unknown_critics.add(j)
            continue
        config = _params(cls, entry.params, f"critics[{j}]", problems)
        if config is not None:
            out.critics[j] = ResolvedCritic(entry, cls, config, entry.instance_id)
    for i, entry in losses:
        cls = _look_up("loss", entry.name, f"losses[{i}].name", registry, problems)
        if cls is None:
            out.roles.append((i, entry, None))
            continue
        config = _params(cls, entry.params, f"losses[{i}]", problems)
        out.roles.append((i, entry, critic_roles(cls, i, problems)))  # None: reported, bound like an unknown loss
        problems.extend(_weight_problems(i, entry, cls))
        if entry.enabled and cls.needs_real_data and has_images is False:
            problems.append(Problem(f"losses[{i}]", f"{entry.name!r} needs real images: set data.images or "
                                                    f"data.dataset"))
        if config is not None:
            out.losses[i] = ResolvedLoss(entry, cls, config)
    return out


# -- stage 2 -------------------------------------------------------------------------------------------
def resolve(recipe: Recipe, registry: "Registry", *, source: str | Path | None = None,
            base_dir: str | Path | None = None, check_environment: bool = True) -> ResolvedRecipe:
    """Stage 2: look up the family, every loss and critic, validate their ``params``, bind losses to critics,
    and run the checks that need no model (the model folder's configs; with ``check_environment``, also this
    machine's devices and the run folder: off for a recipe read back from another machine's run).

    Raises one RecipeError with every problem; critic asset problems (missing weight files) come back
    as ``warnings`` since ``validate`` should report them without failing.

    ``enabled = false`` entries are still looked up and validated (a typo should not wait until the
    entry is switched back on) but are left out of the result, so an ablation is one key. A critic only
    disabled losses would have used is dropped with them rather than reported as unused; a disabled
    critic that an enabled loss trains against is an error.
    """
    problems: list[Problem] = []
    backbone_cls = _look_up("model family", recipe.model.family, "model.family", registry, problems)
    found = _resolve_entries(list(enumerate(recipe.critics)), list(enumerate(recipe.losses)),
                             recipe.data.has_images, registry, problems)
    binding = bind_critics(found.roles, recipe.critics, problems, unknown_critics=found.unknown_critics)
    if backbone_cls is not None:
        problems += model_problems(backbone_cls, recipe)
    for j, rc in found.critics.items():
        if rc.entry.enabled:
            problems += critic_problems(j, rc.entry.name, rc.cls, rc.config, recipe)
    problems += machine_and_folder_problems(recipe, check_environment)
    if problems:
        raise RecipeError(unique(problems), None if source is None else str(source))

    losses = []
    for i, rl in found.losses.items():
        if rl.entry.enabled:
            rl.critic_ids = binding.critic_ids.get(i, {})
            losses.append(rl)
    kept = [(j, rc) for j, rc in found.critics.items() if rc.entry.enabled and rc.id in binding.used]
    warnings: list[str] = []
    for j, rc in kept:  # asset problems only of critics that will be built
        # A critic names its own fields as ``critics[*].params.x`` (it cannot know its index).
        warnings.extend(w.replace("critics[*]", f"critics[{j}]") if "critics[*]" in w
                        else f"critics[{j}] ({rc.entry.name}): {w}" for w in rc.cls.check_assets(rc.config))
    src = Path(source) if source is not None else None
    if base_dir is None:
        base_dir = src.resolve().parent if src is not None else Path.cwd()
    return ResolvedRecipe(recipe, src, Path(base_dir), backbone_cls, losses, [rc for _, rc in kept], warnings)


# -- stage 2 on a recipe that failed stage 1 ----------------------------------------------------------------
def _section(data: Mapping, key: str, model: type[pydantic.BaseModel]) -> Optional[Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        return None
    try:
        return model.model_validate(dict(value))
    except pydantic.ValidationError:
        return None


def _entries(data: Mapping, key: str, model: type[pydantic.BaseModel]) -> tuple[list[tuple[int, Any]], bool]:
    """The entries of a ``[[key]]`` list worth resolving, and whether all of them are well-formed.

    An entry with a bad field elsewhere (``weight = nan``) still has its name and params checked: it is
    built from just those (``model_construct``, other fields at their defaults), so that a misspelt name
    is not held back until the weight is fixed."""
    raw = data.get(key, [])
    if not isinstance(raw, list):
        return [], False
    out, all_valid = [], True
    for k, item in enumerate(raw):
        try:
            out.append((k, model.model_validate(item)))
            continue
        except pydantic.ValidationError:
            all_valid = False
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name:
            params = item.get("params", {})
            enabled = item.get("enabled", True)
            out.append((k, model.model_construct(name=name, params=dict(params) if isinstance(params, Mapping) else {},
                                                 enabled=enabled if isinstance(enabled, bool) else True)))
    return out, all_valid


def resolve_partial(data: Mapping, registry: "Registry", *, check_environment: bool = True) -> list[Problem]:
    """The stage-2 problems of a recipe whose structure is invalid: names and params of every well-formed
    entry, critic bindings when all entries are well-formed, and the checks of sections valid on their own.
    ``data`` is the parsed recipe (after ``--set``); stage 1's own problems are not repeated."""
    problems: list[Problem] = []
    model, family = data.get("model"), None
    if isinstance(model, Mapping) and isinstance(model.get("family"), str) and model["family"]:
        family = _look_up("model family", model["family"], "model.family", registry, problems)
    critics, all_critics = _entries(data, "critics", CriticEntry)
    losses, all_losses = _entries(data, "losses", LossEntry)
    raw_data = data.get("data")
    has_images = bool(raw_data.get("images") or raw_data.get("dataset")) if isinstance(raw_data, Mapping) else None
    found = _resolve_entries(critics, losses, has_images, registry, problems)
    ids = [c.instance_id for _, c in critics]
    if all_critics and all_losses and len(set(ids)) == len(ids):
        bind_critics(found.roles, [c for _, c in critics], problems, unknown_critics=found.unknown_critics)
    sections = {key: _section(data, key, Recipe.model_fields[key].annotation)
                for key in ("run", "model", "student", "data", "train", "sample")}
    if family is not None and all(sections[k] is not None for k in ("model", "student", "data")):
        # The family's checks read these sections; the others keep their defaults. An invalid [sample] is
        # passed on with no prompts: its defaults are no prompts of this recipe (a toy recipe whose only
        # problem was sample.steps was told that the default SD prompts are not toy prompts).
        sample = sections["sample"] or SampleConfig.model_construct(prompts=[], steps=None)
        partial = Recipe.model_construct(**{k: sections[k] for k in ("model", "student", "data")}, sample=sample)
        problems += model_problems(family, partial)
    if sections["train"] is not None:
        problems += device_problems(sections["train"], check_environment)
    if sections["run"] is not None:
        problems += resume_problems(sections["run"], check_environment)
        if check_environment:
            problems += output_dir_problems(sections["run"])
    return problems
