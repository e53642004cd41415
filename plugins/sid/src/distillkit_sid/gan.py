"""The diffusion-GAN of SiDA and few-step SiD: the fake score's encoder is the discriminator.

``sid.gan`` (SiDA, ICLR 2025; few-step SiD, arXiv 2505.12674) adds no parameters: the logit map is the
channel mean of the fake-score network's bottleneck (its encoder features, ``Backbone.features``).
``sid.gan_head`` is the other option, DMD2's: a small trainable conv head (``core.gan_head``, a second
critic role) on the same bottleneck. Everything else is shared:

* real latents and the student's sample are noised with the **same t and ε** (the same draw as
  ``sid.sid`` in that phase), and the logits come from the conditional branch (with CFG on the fake
  score, the authors' code keeps the conditional half);
* critic phase: BCE(D(real), 1) and BCE(D(fake), 0) on logits clamped to ±10, each averaged over a
  sample's logits, (real + fake)/2 × C·H·W, Σ / B × ``discriminator_scale``; summed with the fake score's
  own loss into its one optimiser step;
* generator phase: BCE(clamp(D(x_t^fake)), 1) = softplus(−D), per-sample mean × SiD's 1/w × C·H·W,
  Σ / B × ``scale``. The code's 0.5·L_SiD + 0.5·L_GAN after a warm-up is the two entries' recipe
  weights (ramps), so the warm-up length is a recipe value.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

import distillkit
from distillkit.losses.gan import channel_mean_logits
from distillkit_sid import draws
from distillkit_sid import functional as Fn


class GANConfig(pydantic.BaseModel):
    """``[[losses]] name = "sid.gan"`` / ``"sid.gan_head"`` → ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    clamp: float = pydantic.Field(10.0, ge=0, description="logits are clamped to ±clamp [code: 10]; 0 = no clamp")
    clamp_discriminator: bool = pydantic.Field(
        True, description="clamp in the critic phase too [SiD-DiT code]; false: generator side only [SiDA code]")
    weighting: Literal["sid", "none"] = pydantic.Field(
        "sid", description="'sid': the generator term × SiD's 1/mean|x_g − f_teacher| (taken from sid.sid, which "
                           "must come first in [[losses]]) [code]; 'none': × 1")
    scale_by_elements: bool = pydantic.Field(True, description="× C·H·W of the sample, as the code [code]")
    scale: float = pydantic.Field(1.0, gt=0, description="generator-side scale (the code's lsg_gan)")
    discriminator_scale: float = pydantic.Field(1.0, gt=0, description="critic-side scale (the code's lsd)")
    t_min: int = pydantic.Field(20, ge=0, le=999, description="t range; keep it equal to sid.sid's to share its draw")
    t_max: int = pydantic.Field(979, ge=0, le=999)

    _t_range = distillkit.ordered()  # t_min <= t_max


class DiffusionGAN(distillkit.Loss):
    """Diffusion-GAN with SiDA's zero-parameter logits: the channel mean of the fake score's bottleneck."""

    name = "gan"
    Config = GANConfig
    critics = {"fake_score": "core.fake_score"}
    needs_real_data = True
    differentiates_through = frozenset({"fake_score"})

    def logits(self, ctx, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return channel_mean_logits(ctx.critics["fake_score"].features(x_t, t, cond).mid)

    def _clamp(self, side: str):
        c = self.config
        if c.clamp == 0 or (side == "critic" and not c.clamp_discriminator):
            return None
        return c.clamp

    def generator_loss(self, ctx) -> distillkit.LossOutput:
        c = self.config
        x_g = ctx.student_x0.float()
        t, eps = draws.noise(ctx, x_g, c.t_min, c.t_max)
        logits = self.logits(ctx, ctx.backbone.schedule.add_noise(x_g, eps, t), t, ctx.cond)
        weight = 1.0 / draws.sid_weight(ctx, c.t_min, c.t_max, self.label) if c.weighting == "sid" else None
        elements = x_g[0].numel() if c.scale_by_elements else 1
        loss = Fn.gan_generator_loss(logits, self._clamp("generator"), weight, elements, c.scale)
        return distillkit.LossOutput(loss, {"g_gan": loss.detach(), "logits_fake_mean": logits.detach().mean()})

    def critic_loss(self, ctx) -> distillkit.LossOutput:
        c = self.config
        if ctx.real_x0 is None:
            raise distillkit.DistillkitError(f"{self.label} needs real images: set [data] images or dataset")
        fake = ctx.student_x0.detach().float()
        real = ctx.real_x0.detach().float()
        t, eps = draws.noise(ctx, fake, c.t_min, c.t_max)
        cond = draws.fake_conditioning(ctx)
        schedule = ctx.backbone.schedule
        real_logits = self.logits(ctx, schedule.add_noise(real, eps, t), t, cond)
        fake_logits = self.logits(ctx, schedule.add_noise(fake, eps, t), t, cond)
        elements = fake[0].numel() if c.scale_by_elements else 1
        d_real, d_fake = Fn.gan_discriminator_loss(real_logits, fake_logits, self._clamp("critic"), elements,
                                                   c.discriminator_scale)
        return distillkit.LossOutput(d_real + d_fake, {
            "d_real": d_real.detach(), "d_fake": d_fake.detach(),
            "logits_real_mean": real_logits.detach().mean(), "logits_fake_mean": fake_logits.detach().mean()})

    @property
    def label(self) -> str:
        return f"sid.{self.name}"


class DiffusionGANHead(DiffusionGAN):
    """The same diffusion-GAN with DMD2's discriminator: a trainable conv head on the fake score's bottleneck."""

    name = "gan_head"
    critics = {"fake_score": "core.fake_score", "gan_head": "core.gan_head"}
    differentiates_through = frozenset({"fake_score", "gan_head"})

    def logits(self, ctx, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return ctx.critics["gan_head"](ctx.critics["fake_score"].features(x_t, t, cond).mid)
