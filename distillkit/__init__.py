"""distillkit: distil many-step text-to-image diffusion models into 1-4-step generators."""

from distillkit.diffusion import NoiseSchedule, Prediction
from distillkit.engine import Engine
from distillkit.errors import DistillkitError, ModelLoadError, NonFiniteLossError, PluginError, RecipeError
from distillkit.hookspecs import hookimpl
from distillkit.losses.base import Loss, LossOutput, Phase, StepContext
from distillkit.models.backbone import Backbone
from distillkit.models.conditioning import Conditioning
from distillkit.registry import Registry
from distillkit.roles import BuildEnv, Critic, Student, Teacher

__version__ = "0.1.0"

__all__ = [
    "Backbone", "BuildEnv", "Conditioning", "Critic", "DistillkitError", "Engine", "Loss", "LossOutput",
    "ModelLoadError", "NoiseSchedule", "NonFiniteLossError", "Phase", "PluginError", "Prediction",
    "RecipeError", "Registry", "StepContext", "Student", "Teacher", "hookimpl",
]
