"""``sds.dmd2`` and ``sds.dmd2_gan``: Improved Distribution Matching Distillation (Yin et al. 2024, DMD2).

``sds.dmd2`` — distribution matching. The student's sample x is noised at t ~ U{20..980}; the teacher
(CFG: 1.75 for SD1.5, 8 for SDXL in the authors' scripts) and the fake score (scale 1) each give x̂0, from
their ε in float64; the student moves along

    g = (x̂0_fake − x̂0_teacher) / mean_CHW|x − x̂0_teacher|

through the surrogate ½·mean((x − sg(x − g))²) (DMD2's ``F.mse_loss`` with the default mean). Its
critic term trains the fake score (``core.fake_score``, a full copy of the teacher in DMD2) by ε-MSE
(mean) on the detached sample at t ~ U{0..999}, at CFG 1, without prompt dropout.

``sds.dmd2_gan`` — DMD2's diffusion GAN. A classifier head (``core.gan_head``) reads the fake score's
bottleneck (the UNet's mid-block output). Real latents and the student's sample are each noised with
their *own* t ~ U{0..999} and ε, as DMD2's ``compute_cls_logits`` draws them per call. Losses are the
non-saturating ones: the student minimises mean softplus(−D(x̂_t)) (through the fake score's encoder and
the head, both frozen in that phase); the critic phase trains head *and* fake score on
mean softplus(D(x̂_t)) + mean softplus(−D(x_t)). Its recipe ``weight`` is DMD2's gen_cls_loss_weight
(5e-3 SDXL, 1e-3 SD1.5) and its ``critic_weight`` the guidance_cls_loss_weight (1e-2).

How the critic phase matches DMD2's single "guidance" optimiser: DMD2 adds 1e-2·D-loss to the fake
score's denoising loss and steps one AdamW over fake UNet + head. Here both losses bind the same
``fake_score`` critic, so the engine sums ``1·dmd2 + 1e-2·dmd2_gan`` into one backward, and each critic's
own AdamW (same settings) steps on its share: the same update, except that gradient clipping is per
critic rather than over the union (DMD2: one max-norm of 10 over both).
"""

from __future__ import annotations

from typing import Optional

import pydantic
import torch

from distillkit.config_base import ordered
from distillkit.losses.base import Loss, LossOutput, StepContext

from distillkit_sds import functional as Fn
from distillkit_sds.common import SurrogateConfig, noised_student, surrogate_output
from distillkit_sds.vsd import FakeScoreTraining, train_fake_score


class DMD2Config(SurrogateConfig, FakeScoreTraining):
    """``[[losses]] name = "sds.dmd2"`` → ``params``."""

    guidance_scale: Optional[float] = pydantic.Field(
        None, description="teacher CFG scale, diffusers convention [code: DMD2 real_guidance_scale 8 SDXL, 1.75 "
                          "SD1.5; DMD2's code treats any scale <= 1 as 1, distillkit does not]; default: "
                          "[teacher] guidance_scale")
    reduction: Fn.Reduction = pydantic.Field(
        "mean", description="surrogate reduction: 'mean' [code: DMD2 F.mse_loss] or 'sum' (summed / batch)")
    cond_dropout: float = pydantic.Field(0.0, ge=0, le=1, description="share of fake-score training samples with "
                                                                     "the empty prompt [code: DMD2 none]")


class DMD2(Loss):
    """Distribution matching against the teacher, and the fake score's denoising loss."""

    name = "dmd2"
    Config = DMD2Config
    critics = {"fake_score": "core.fake_score"}

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        n = noised_student(ctx, cfg.t_min, cfg.t_max)
        fake = ctx.critics["fake_score"]
        schedule = ctx.backbone.schedule
        with torch.no_grad():
            eps_teacher = ctx.teacher.predict(n.x_t, n.t, ctx.cond, ctx.uncond, scale=cfg.guidance_scale).eps
            eps_fake = fake.predict(n.x_t, n.t, ctx.cond, ctx.uncond, scale=cfg.fake_guidance_scale).eps
            alpha, sigma = schedule.alpha(n.t.cpu()), schedule.sigma(n.t.cpu())  # float64
            alpha, sigma = alpha.to(n.x_t.device), sigma.to(n.x_t.device)
            x0_teacher = Fn.x0_from_eps_float64(n.x_t, eps_teacher, alpha, sigma)
            x0_fake = Fn.x0_from_eps_float64(n.x_t, eps_fake, alpha, sigma)
            g = Fn.dmd_direction(n.x, x0_teacher, x0_fake)
        return surrogate_output(n, g, cfg, cfg.reduction, "dm",
                                teacher_fake_gap=(x0_fake - x0_teacher).abs().flatten(1).mean(dim=1))

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        return train_fake_score(ctx, self.config, self.config.cond_dropout)


class DMD2GANConfig(pydantic.BaseModel):
    """``[[losses]] name = "sds.dmd2_gan"`` → ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    diffusion_gan: bool = pydantic.Field(
        True, description="noise real and fake before the classifier, each with its own t and ε [code: DMD2 "
                          "--diffusion_gan]; false: classify clean latents at t = 0")
    t_min: int = pydantic.Field(0, ge=0, description="classifier timesteps t ~ U{t_min..t_max} [code: DMD2 "
                                                     "diffusion_gan_max_timestep 1000 → 0..999]")
    t_max: int = pydantic.Field(999, ge=0)

    _t_range = ordered()  # t_min <= t_max


class DMD2GAN(Loss):
    """The classifier branch on the fake score's bottleneck (see the module docstring)."""

    name = "dmd2_gan"
    Config = DMD2GANConfig
    critics = {"fake_score": "core.fake_score", "gan_head": "core.gan_head"}
    needs_real_data = True
    differentiates_through = frozenset({"fake_score", "gan_head"})  # x̂ → fake-score encoder → head

    def _logits(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        """D(x) on a freshly noised copy of x (its own t and ε per call, as DMD2), conditioned on the prompt."""
        cfg = self.config
        if cfg.diffusion_gan:
            t = ctx.sample_timesteps(x.shape[0], cfg.t_min, cfg.t_max).to(x.device)
            x = ctx.backbone.schedule.add_noise(x, ctx.randn_like(x), t)
        else:
            t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        features = ctx.critics["fake_score"].features(x, t, ctx.cond)
        return ctx.critics["gan_head"](features.mid)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        logits = self._logits(ctx, ctx.student_x0.float())
        loss = Fn.dmd2_generator_gan(logits)
        return LossOutput(loss, {"g_gan": loss.detach(), "logits_fake_mean": logits.detach().float().mean()})

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        real = ctx.real_x0
        if real is None:
            raise ValueError("sds.dmd2_gan needs real images: set [data] images or dataset in the recipe")
        real_logits = self._logits(ctx, real.detach().float())
        fake_logits = self._logits(ctx, ctx.student_x0.detach().float())
        d_real, d_fake = Fn.dmd2_discriminator_gan(real_logits, fake_logits)
        return LossOutput(d_real + d_fake, {
            "d_real": d_real.detach(), "d_fake": d_fake.detach(),
            "p_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "p_fake": torch.sigmoid(fake_logits.detach().float()).mean()})
