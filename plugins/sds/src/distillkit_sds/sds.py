"""``sds.sds`` and ``sds.nfsd``: score distillation from the frozen teacher alone, as student objectives.

SDS (DreamFusion, Poole et al. 2022) pushes the student's sample x along w(t)(ε̂_cfg(x_t) − ε): the
teacher's guided noise prediction at a noised copy of x minus the noise that was added. NFSD
(Katzir et al., arXiv 2310.17590) drops the injected noise and uses w(t)(δ_D + s δ_C) instead. Neither
has a critic; the teacher runs under ``no_grad``; the student receives the direction through the
surrogate ½‖x − sg(x − g)‖² (``reduction = "sum"``: summed, divided by the batch, as threestudio).

Guidance is in the diffusers convention everywhere in distillkit: ε̂ = ε_u + s(ε_c − ε_u). DreamFusion
and threestudio's SDS write ε̂ = ε_c + ω(ε_c − ε_u), so their ω = 100 is s = 101 here.
"""

from __future__ import annotations

from typing import Optional

import pydantic
import torch

from distillkit.diffusion.score_weights import NFSD_NEGATIVE_PROMPT
from distillkit.losses.base import Loss, LossOutput, StepContext
from distillkit.models.conditioning import Conditioning

from distillkit_sds import functional as Fn
from distillkit_sds.common import WeightedConfig, noised_student, surrogate_output, weight


class SDSConfig(WeightedConfig):
    """``[[losses]] name = "sds.sds"`` → ``params``."""

    guidance_scale: Optional[float] = pydantic.Field(
        None, description="teacher CFG scale, diffusers convention (DreamFusion's ω is 1 + ω here: ω = 100 → 101); "
                          "default: [teacher] guidance_scale")


class SDS(Loss):
    """Score Distillation Sampling: g = w(t)(ε̂_cfg(x_t; y) − ε), t ~ U{t_min..t_max}."""

    name = "sds"
    Config = SDSConfig

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        n = noised_student(ctx, cfg.t_min, cfg.t_max)
        eps_hat = ctx.teacher.target(n.x_t, n.t, ctx.cond, ctx.uncond, scale=cfg.guidance_scale).eps.float()
        w = weight(cfg.weighting, n)
        g = Fn.sds_direction(eps_hat, n.noise, w)
        return surrogate_output(n, g, cfg, cfg.reduction, "sds", w_mean=w)


class NFSDConfig(WeightedConfig):
    """``[[losses]] name = "sds.nfsd"`` → ``params``."""

    scale: float = pydantic.Field(7.5, description="s of δ_D + s δ_C [paper: NFSD, s = 7.5]")
    negative_prompt: str = pydantic.Field(NFSD_NEGATIVE_PROMPT, description="y_neg of δ_D above the threshold "
                                                                            "[paper: NFSD]")
    threshold: int = pydantic.Field(200, ge=0, description="δ_D = ε(∅) for t below this, ε(∅) − ε(y_neg) from it "
                                                           "on [paper: NFSD, t < 200]")


class NFSD(Loss):
    """Noise-Free Score Distillation: g = w(t)(δ_D + s δ_C), three teacher branches in one 3B batch."""

    name = "nfsd"
    Config = NFSDConfig

    def _negative(self, ctx: StepContext) -> Conditioning:
        """The negative prompt's conditioning, encoded once per step (it depends on nothing else)."""
        prompt = self.config.negative_prompt
        return ctx.cached(("sds.nfsd.negative", prompt), lambda: ctx.backbone.encode_prompts([prompt], ctx.resolution),
                          across_phases=True)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        n = noised_student(ctx, cfg.t_min, cfg.t_max)
        b = n.x_t.shape[0]
        conds = Conditioning.cat([ctx.cond, ctx.uncond.expand(b), self._negative(ctx).expand(b)])
        with torch.no_grad():
            eps = ctx.backbone.denoise(ctx.teacher.unet, torch.cat([n.x_t] * 3), torch.cat([n.t] * 3), conds).eps
        eps_c, eps_u, eps_n = eps.float().chunk(3)
        w = weight(cfg.weighting, n)
        g = Fn.nfsd_direction(eps_c, eps_u, eps_n, n.t, w, cfg.scale, cfg.threshold)
        return surrogate_output(n, g, cfg, cfg.reduction, "nfsd", w_mean=w,
                                negative_share=(n.t >= cfg.threshold).float())
