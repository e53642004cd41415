"""``sds.vsd``: Variational Score Distillation (ProlificDreamer, Wang et al. 2023) as a student objective.

Two networks score a noised copy x_t of the student's sample: the frozen teacher with CFG (7.5, diffusers
convention) and a *fake score* ε_φ that tracks the student's own distribution (``core.fake_score``; the
recipe makes it a LoRA adapter on the teacher's frozen UNet, as ProlificDreamer's LoRA). The student
moves along

    g = w(t)(ε̂_teacher^cfg(x_t) − ε̂_fake(x_t)),   w = σ_t²,   t ~ U{20..980}

through the surrogate (summed, divided by the batch: threestudio's reduction), both predictions under
``no_grad``. The fake score learns by ε-MSE (mean over elements) on the *detached* sample at
t ~ U{0..999}, with the prompt replaced by the empty prompt for 10% of the samples.

Two translations from ProlificDreamer's 3D setting. (1) Its LoRA is conditioned on the camera and keeps
the text; its 10% dropout zeroes the camera. A text-to-image student has no camera, so the condition
that is dropped here is the prompt: the fake score then learns a conditional and an unconditional branch
on the same network, which ``fake_guidance_scale`` ≠ 1 can combine (ProlificDreamer's LoRA scale is 1,
the conditional branch alone). (2) threestudio sums both losses and takes one optimiser step for the
scene and the LoRA; here the two are separate phases on the same sample, and with
``train.critic_first = false`` (the shipped recipe) the generator direction uses the fake score from
before its update, as in that joint step.
"""

from __future__ import annotations

from typing import Optional

import pydantic
import torch

from distillkit.config_base import ordered
from distillkit.losses.base import Loss, LossOutput, StepContext

from distillkit_sds import functional as Fn
from distillkit_sds.common import WeightedConfig, noised_student, surrogate_output, weight


class FakeScoreTraining(pydantic.BaseModel):
    """How a loss trains its fake score (shared by VSD and DMD2)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    fake_t_min: int = pydantic.Field(0, ge=0, description="fake-score training timesteps t ~ U{fake_t_min.."
                                                          "fake_t_max} [code: threestudio and DMD2 use all 1000]")
    fake_t_max: int = pydantic.Field(999, ge=0)
    fake_guidance_scale: float = pydantic.Field(
        1.0, description="CFG scale of the fake score in the generator direction (1 = conditional branch only) "
                         "[code: threestudio guidance_scale_lora 1.0; DMD2 asserts 1]")

    _fake_range = ordered("fake_t_min", "fake_t_max")


class VSDConfig(WeightedConfig, FakeScoreTraining):
    """``[[losses]] name = "sds.vsd"`` → ``params``."""

    guidance_scale: Optional[float] = pydantic.Field(
        None, description="teacher CFG scale (diffusers convention) [code: threestudio VSD 7.5]; default: "
                          "[teacher] guidance_scale")
    cond_dropout: float = pydantic.Field(0.1, ge=0, le=1, description="share of fake-score training samples with "
                                                                     "the empty prompt [code: threestudio 10%]")
    t_max_anneal_step: Optional[int] = pydantic.Field(
        None, ge=0, description="from this step on the student's t_max is t_max_annealed (none: never) "
                                "[code: prolificdreamer.yaml anneals 0.98 → 0.5 after step 5000]")
    t_max_annealed: int = pydantic.Field(500, ge=0, description="t_max after t_max_anneal_step")

    @pydantic.model_validator(mode="after")
    def _anneal_range(self):
        if self.t_max_anneal_step is not None and self.t_max_annealed < self.t_min:
            raise ValueError(f"t_max_annealed ({self.t_max_annealed}) must not be below t_min ({self.t_min})")
        return self

    def t_max_at(self, step: int) -> int:
        late = self.t_max_anneal_step is not None and step >= self.t_max_anneal_step
        return self.t_max_annealed if late else self.t_max


def train_fake_score(ctx: StepContext, cfg: FakeScoreTraining, cond_dropout: float) -> LossOutput:
    """ε-MSE (mean) of the bound fake score on the detached student sample, prompts dropped at ``cond_dropout``."""
    fake = ctx.critics["fake_score"]
    x0 = ctx.student_x0.detach().float()
    n = x0.shape[0]
    t = ctx.sample_timesteps(n, cfg.fake_t_min, cfg.fake_t_max).to(x0.device)
    noise = ctx.randn_like(x0)
    cond = ctx.cond
    if cond_dropout > 0:
        drop = ctx.rand(n) < cond_dropout
        if bool(drop.any()):
            cond = cond.where(drop, ctx.uncond)
    loss = fake.denoising_loss(x0, t, noise, cond, reduction="mean")
    return LossOutput(loss, {"fake_eps_mse": loss.detach(), "fake_t_mean": t.float().mean()})


class VSD(Loss):
    """VSD: the generator direction against the teacher, and the fake score's denoising loss."""

    name = "vsd"
    Config = VSDConfig
    critics = {"fake_score": "core.fake_score"}

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        n = noised_student(ctx, cfg.t_min, cfg.t_max_at(ctx.step))
        fake = ctx.critics["fake_score"]
        with torch.no_grad():
            eps_teacher = ctx.teacher.predict(n.x_t, n.t, ctx.cond, ctx.uncond, scale=cfg.guidance_scale).eps.float()
            eps_fake = fake.predict(n.x_t, n.t, ctx.cond, ctx.uncond, scale=cfg.fake_guidance_scale).eps.float()
        w = weight(cfg.weighting, n)
        g = Fn.vsd_direction(eps_teacher, eps_fake, w)
        return surrogate_output(n, g, cfg, cfg.reduction, "vsd", w_mean=w)

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        return train_fake_score(ctx, self.config, self.config.cond_dropout)
