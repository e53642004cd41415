"""Pure diffusion maths: schedules, parameterisations and guidance. No models live here."""

from distillkit.diffusion.guidance import cfg_combine, guided
from distillkit.diffusion.param import Prediction, PredictionType, convert
from distillkit.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "Prediction", "PredictionType", "convert", "cfg_combine", "guided"]
