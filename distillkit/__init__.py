"""distillkit: distil many-step text-to-image diffusion models into 1-4-step generators.

The public names are resolved on first use (PEP 562): ``import distillkit`` and ``distillkit.hookimpl``
(all a plugin's registration module needs) cost only pluggy, and ``distillkit --help`` starts without
importing torch. ``from distillkit import Engine`` imports what it needs at that moment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Backbone": "distillkit.models.backbone",
    "BuildEnv": "distillkit.roles",
    "Conditioning": "distillkit.models.conditioning",
    "Critic": "distillkit.roles",
    "DistillkitError": "distillkit.errors",
    "Engine": "distillkit.engine",
    "Loss": "distillkit.losses.base",
    "LossOutput": "distillkit.losses.base",
    "ModelLoadError": "distillkit.errors",
    "NoiseSchedule": "distillkit.diffusion",
    "NonFiniteLossError": "distillkit.errors",
    "Phase": "distillkit.losses.base",
    "PluginError": "distillkit.errors",
    "Prediction": "distillkit.diffusion",
    "RecipeError": "distillkit.errors",
    "Registry": "distillkit.registry",
    "StepContext": "distillkit.losses.base",
    "Student": "distillkit.roles",
    "Teacher": "distillkit.roles",
    "hookimpl": "distillkit.hookspecs",
    "ordered": "distillkit.config_base",
}

__all__ = [
    "Backbone", "BuildEnv", "Conditioning", "Critic", "DistillkitError", "Engine", "Loss", "LossOutput",
    "ModelLoadError", "NoiseSchedule", "NonFiniteLossError", "Phase", "PluginError", "Prediction",
    "RecipeError", "Registry", "StepContext", "Student", "Teacher", "hookimpl", "ordered",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from distillkit.diffusion import NoiseSchedule, Prediction
    from distillkit.engine import Engine
    from distillkit.errors import DistillkitError, ModelLoadError, NonFiniteLossError, PluginError, RecipeError
    from distillkit.hookspecs import hookimpl
    from distillkit.losses.base import Loss, LossOutput, Phase, StepContext
    from distillkit.models.backbone import Backbone
    from distillkit.models.conditioning import Conditioning
    from distillkit.registry import Registry
    from distillkit.roles import BuildEnv, Critic, Student, Teacher
