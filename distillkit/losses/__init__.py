from distillkit.losses.base import Loss, LossOutput, Phase, StepContext

__all__ = ["Loss", "LossOutput", "Phase", "StepContext"]
