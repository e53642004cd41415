"""What the score-distillation losses share: their common ``params`` and the noising of the student's sample.

Every generator term here draws t uniformly from [t_min, t_max] (both inclusive, threestudio's and DMD2's
``randint(min_step, max_step + 1)`` with 0.02·1000 = 20 and 0.98·1000 = 980), noises a *detached* copy
of the student's sample, asks frozen networks for predictions under ``no_grad``, and turns the
resulting direction into the surrogate of :func:`distillkit_sds.functional.surrogate_loss`. Only the
surrogate's first argument carries the student's graph, so no network Jacobian is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pydantic
import torch

from distillkit.config_base import ordered
from distillkit.diffusion.score_weights import Weighting, score_weight
from distillkit.losses.base import LossOutput, StepContext

from distillkit_sds import functional as Fn


class SurrogateConfig(pydantic.BaseModel):
    """Params every surrogate loss of this plugin takes."""

    model_config = pydantic.ConfigDict(extra="forbid")

    t_min: int = pydantic.Field(20, ge=0, description="teacher timesteps t ~ U{t_min..t_max}, both inclusive "
                                                      "[code: threestudio min_step_percent 0.02, DMD2 the same]")
    t_max: int = pydantic.Field(980, ge=0, description="[code: threestudio/DMD2 max_step_percent 0.98]")
    grad_clamp: Optional[float] = pydantic.Field(
        None, gt=0, description="clamp the direction elementwise to [-grad_clamp, grad_clamp] after nan_to_num "
                                "(threestudio's grad_clip; off by default there too)")
    nan_to_num: bool = pydantic.Field(True, description="replace NaN/Inf in the direction before the surrogate "
                                                        "[code: threestudio and DMD2 always do]")

    _t_range = ordered()  # t_min <= t_max


class WeightedConfig(SurrogateConfig):
    """Params of the losses whose direction carries a weighting w(t) (SDS, NFSD, VSD)."""

    weighting: Weighting = pydantic.Field(
        "sds", description="w(t): 'sds' = σ_t² [paper: DreamFusion], 'uniform' = 1, 'fantasia3d' = α_t σ_t² "
                           "[code: threestudio weighting_strategy]")
    reduction: Fn.Reduction = pydantic.Field(
        "sum", description="surrogate reduction: 'sum' = squared error summed, divided by the batch size "
                           "(gradient g/B) [code: threestudio]; 'mean' over all elements (gradient g/numel)")


@dataclass
class Noised:
    """The student's sample noised for one loss evaluation: x_t = α_t sg(x) + σ_t ε at per-sample t."""

    x: torch.Tensor  # the student's sample, with its graph in the generator phase
    t: torch.Tensor  # (B,) integer timesteps
    noise: torch.Tensor
    x_t: torch.Tensor  # float32, no graph
    alpha: torch.Tensor  # (B, 1, 1, 1) float32
    sigma: torch.Tensor


def noised_student(ctx: StepContext, t_min: int, t_max: int) -> Noised:
    """Draw t ~ U{t_min..t_max} and ε ~ N(0, I) from the step's seeded generator and noise sg(x)."""
    x = ctx.student_x0
    schedule = ctx.backbone.schedule
    t = ctx.sample_timesteps(x.shape[0], t_min, t_max).to(x.device)
    noise = ctx.randn_like(x.float())
    x_t = schedule.add_noise(x.detach().float(), noise, t)
    alpha, sigma = schedule.coefficients(t, x_t)
    return Noised(x, t, noise, x_t, alpha, sigma)


def weight(kind: Weighting, n: Noised) -> torch.Tensor:
    """w(t) per sample, (B, 1, 1, 1)."""
    return score_weight(kind, n.sigma, n.alpha)


def surrogate_output(n: Noised, direction: torch.Tensor, cfg: SurrogateConfig, reduction: Fn.Reduction,
                     name: str, **extra: torch.Tensor) -> LossOutput:
    """The surrogate of ``direction`` on the student's sample, with the terms every loss logs: its value,
    the direction's norm (threestudio's ``grad_norm``) and the mean timestep."""
    g = Fn.clean_direction(direction.float(), cfg.grad_clamp, cfg.nan_to_num).detach()
    loss = Fn.surrogate_loss(n.x, g, reduction)
    terms = {name: loss.detach(), "grad_norm": g.norm().detach(), "t_mean": n.t.float().mean().detach()}
    terms.update({k: v.detach().float().mean() for k, v in extra.items()})
    return LossOutput(loss, terms)
