"""Recipes: the TOML schema (stage 1) and loading with name resolution (stage 2)."""

from distillkit.recipe.load import (
    ResolvedCritic,
    ResolvedLoss,
    ResolvedRecipe,
    apply_overrides,
    dump_recipe,
    load_recipe,
    read_toml,
    resolve,
    validate_structure,
)
from distillkit.recipe.schema import CriticEntry, LossEntry, Recipe, WeightSchedule

__all__ = [
    "CriticEntry", "LossEntry", "Recipe", "ResolvedCritic", "ResolvedLoss", "ResolvedRecipe", "WeightSchedule",
    "apply_overrides", "dump_recipe", "load_recipe", "read_toml", "resolve", "validate_structure",
]
