"""Recipes: the TOML schema (stage 1) and loading with name resolution and model-free checks (stage 2).

Modules by job: ``schema`` (the pydantic schema), ``toml_io`` (reading and writing TOML), ``overrides``
(``--set``), ``messages`` (pydantic errors as problems a user can act on), ``binding`` (losses to critics),
``checks`` (model folder, machine, run folder), ``resolve`` (stage 2), ``load`` (the pipeline).
"""

from distillkit.recipe.load import (
    ResolvedCritic,
    ResolvedLoss,
    ResolvedRecipe,
    apply_overrides,
    dump_recipe,
    dump_resolved,
    load_recipe,
    read_toml,
    resolve,
    validate_structure,
)
from distillkit.recipe.problems import Problem
from distillkit.recipe.schema import CriticEntry, LossEntry, Recipe, WeightSchedule

__all__ = [
    "CriticEntry", "LossEntry", "Problem", "Recipe", "ResolvedCritic", "ResolvedLoss", "ResolvedRecipe",
    "WeightSchedule", "apply_overrides", "dump_recipe", "dump_resolved", "load_recipe", "read_toml", "resolve",
    "validate_structure",
]
