"""ADD's two objectives as distillkit losses: ``add.adversarial`` and ``add.distill``.

The student objective of ADD (arXiv 2311.17042, eq. 1) is L = L_adv^G + λ L_distill with λ = 2.5. Here
the two terms are separate recipe entries, so λ is simply the recipe weight of ``add.distill`` and each
term can be dropped for the Table 1 loss ablation (adversarial only / distillation only).

Gradient routing (docs/methods.md, "Roles, phases"):

* ``Adversarial``, generator phase: x̂_θ → VAE decode → DiffAugment → frozen F → heads (frozen for this
  phase) → −Σ_k D_k. Only the student receives gradient.
* ``Adversarial``, critic phase: real and (detached) fake images, each with its own augmentation draw;
  hinge on both plus γ·R1 w.r.t. the heads' inputs on the real branch. Only the heads receive gradient.
* ``Distill``: the teacher sees sg(x̂_θ) re-noised at a random t and gives a constant target; the only
  gradient path is the first argument of d(x̂_θ, target).
"""

from __future__ import annotations

from typing import Literal, Optional

import pydantic
import torch

from distillkit.config_base import ordered
from distillkit.losses.base import Loss, LossOutput, StepContext
from distillkit.models.conditioning import Conditioning

from distillkit_add import functional as Fn


class Adversarial(Loss):
    """L_adv (ADD eq. 2-3): hinge GAN with a projected discriminator on frozen ViT features.

    The discriminator's settings (feature network, conditioning, R1 γ, reduction) live in its
    ``[[critics]]`` entry; this loss only composes them.
    """

    name = "adversarial"
    critic = "add.discriminator"
    needs_real_data = True
    differentiates_through = frozenset({"vae", "critic"})  # x̂_θ → VAE decoder → F → heads

    @staticmethod
    def _critic(ctx: StepContext):
        """The bound discriminator; the engine passes the module itself (critics are never DDP-wrapped)."""
        if ctx.critic is None:
            raise RuntimeError("add.adversarial needs its add.discriminator critic in ctx.critic")
        return ctx.critic

    @staticmethod
    def _real(ctx: StepContext) -> torch.Tensor:
        real = ctx.real_pixels_or_decode()
        if real is None:
            raise ValueError("add.adversarial needs real images: set [data] images or dataset in the recipe")
        return real

    def _condition(self, ctx: StepContext, disc) -> Optional[torch.Tensor]:
        """[c_text, c_img] of this batch; c_img is of the real image behind each student input (§3.2).

        Memoised per discriminator: two discriminators in one recipe (e.g. different feature networks
        or conditioning) each have their own encoders, so they must not share one vector. It depends on
        the batch alone (frozen encoders), so the critic and generator phases of a step compute it once.
        """
        def compute():
            real = self._real(ctx) if disc.image_encoder is not None else None
            return disc.condition(ctx.prompts, ctx.cond, real)
        return ctx.cached(("add.discriminator.condition", id(disc)), compute, across_phases=True)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        disc = self._critic(ctx)
        c = self._condition(ctx, disc)
        features = disc.features(ctx.student_pixels(), ctx.generator)
        logits = disc(features, c)
        loss = Fn.hinge_g_loss(logits, disc.config.reduction)
        return LossOutput(loss, {"g_adv": loss.detach(), "logits_fake_mean": _mean(logits)})

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        disc = self._critic(ctx)
        c = self._condition(ctx, disc)
        with torch.no_grad():  # nothing upstream of the heads' inputs trains in this phase
            fake = ctx.student_pixels().detach()
            real_features = disc.features(self._real(ctx), ctx.generator)
            fake_features = disc.features(fake, ctx.generator)
        # R1 is taken w.r.t. each head's input f_k = F_k(x0) (ADD §3.2), so those become the leaves.
        real_features = [f.detach().requires_grad_(True) for f in real_features]
        real_logits = disc(real_features, c)
        fake_logits = disc(fake_features, c)
        d_real, d_fake = Fn.hinge_d_loss(real_logits, fake_logits, disc.config.reduction)
        total = d_real + d_fake
        terms = {"d_real": d_real.detach(), "d_fake": d_fake.detach(), "logits_real_mean": _mean(real_logits),
                 "logits_fake_mean": _mean(fake_logits)}
        gamma = disc.config.r1_gamma
        if gamma > 0:
            r1 = Fn.r1_penalty(real_logits, real_features)
            total = total + gamma * r1
            terms["r1"] = r1.detach()
        return LossOutput(total, terms)


def _mean(logits) -> torch.Tensor:
    return torch.cat([l.detach().float().flatten() for l in logits]).mean()


class DistillConfig(pydantic.BaseModel):
    """``[[losses]] name = "add.distill"`` → ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    weighting: Fn.Weighting = pydantic.Field(
        "exp", description="c(t): 'exp' = α_t [paper §3.3], 'sds' = α_t w/(2σ_t) [paper app. A], 'nfsd' = sds "
                           "c with the NFSD target (the paper's final models) [a reconstruction: docs/methods.md, ADD choice 4]")
    sds_weight: Fn.SDSWeight = pydantic.Field("sigma2", description="w(t) of sds/nfsd: σ_t² (DreamFusion) or 1")
    t_min: int = pydantic.Field(20, ge=0, description="teacher timesteps t ~ U[t_min, t_max] (choice)")
    t_max: int = pydantic.Field(980, ge=0)
    guidance_scale: Optional[float] = pydantic.Field(
        None, description="teacher CFG scale for exp/sds (diffusers convention); default: [teacher] guidance_scale")
    space: Literal["pixel", "latent"] = pydantic.Field(
        "pixel", description="'pixel': decode both x̂_θ and the target with the VAE [paper]; 'latent': compare "
                             "latents (where appendix A's SDS equivalence is exact)")
    reduction: Fn.DistanceReduction = pydantic.Field(
        "sum", description="d per sample: sum of squares [paper: ||·||²₂] or mean; then the batch mean")
    nfsd_scale: float = pydantic.Field(7.5, description="s of δ_D + s δ_C [NFSD paper]")
    nfsd_negative_prompt: str = pydantic.Field(Fn.NFSD_NEGATIVE_PROMPT, description="y_neg of δ_D [NFSD paper]")
    nfsd_threshold: int = pydantic.Field(200, ge=0, description="δ_D = ε(∅) below this t [NFSD paper]")

    _t_range = ordered()  # t_min <= t_max


class Distill(Loss):
    """L_distill (ADD eq. 4): E_{t,ε'}[c(t) d(x̂_θ, x̂_ψ(sg(x̂_{θ,t}); t))], x̂_{θ,t} = α_t x̂_θ + σ_t ε'.

    The teacher is applied to the re-noised student output, not to x̂_θ itself, because a clean input is
    out of distribution for it (§3.3); one teacher step per sample, which Table 1f finds sufficient. For
    LDMs the paper measures d on decoded pixels (``space = "pixel"``: the target is decoded under
    no_grad, the student's x̂_θ through the VAE decoder with its graph); in latent space, the space the
    noise is added in, ``weighting = "sds"`` reproduces the SDS gradient w(t)(ε̂ − ε') exactly (app. A).
    """

    name = "distill"
    Config = DistillConfig

    def gradient_paths(self) -> frozenset[str]:
        """Pixel space back-propagates through the VAE decoder; the teacher's target never carries a graph."""
        return frozenset({"vae"}) if self.config.space == "pixel" else frozenset()

    def _nfsd_direction(self, ctx: StepContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """δ_D + s δ_C from ε(y), ε(∅), ε(y_neg) of the teacher at x_t, as one 3B batch."""
        cfg = self.config
        b = x_t.shape[0]
        neg = ctx.cached(("add.nfsd_negative", cfg.nfsd_negative_prompt),
                         lambda: ctx.backbone.encode_prompts([cfg.nfsd_negative_prompt], ctx.resolution))
        conds = Conditioning.cat([ctx.cond, ctx.uncond.expand(b), neg.expand(b)])
        with torch.no_grad():
            eps = ctx.backbone.denoise(ctx.teacher.unet, torch.cat([x_t] * 3), torch.cat([t] * 3), conds).eps
        eps_c, eps_u, eps_n = eps.chunk(3)
        return Fn.nfsd_direction(eps_c, eps_u, eps_n, t, cfg.nfsd_scale, cfg.nfsd_threshold)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        schedule = ctx.backbone.schedule
        x0 = ctx.student_x0
        t = ctx.sample_timesteps(x0.shape[0], cfg.t_min, cfg.t_max).to(x0.device)
        eps = ctx.randn_like(x0)
        x_t = schedule.add_noise(x0.detach(), eps, t)  # sg(x̂_{θ,t}): the teacher's input carries no gradient
        alpha, sigma = schedule.coefficients(t, x0.float())
        if cfg.weighting == "nfsd":
            target = Fn.nfsd_target(x0, self._nfsd_direction(ctx, x_t, t).float(), alpha, sigma)
        else:
            target = ctx.teacher.target(x_t, t, ctx.cond, ctx.uncond, scale=cfg.guidance_scale).x0
        c = Fn.distill_weight(cfg.weighting, alpha, sigma, cfg.sds_weight).reshape(-1)
        x = x0
        if cfg.space == "pixel":
            x = ctx.student_pixels()
            with torch.no_grad():
                target = ctx.backbone.decode(target.to(x0.dtype))
        loss = Fn.distill_distance(x, target, c, cfg.reduction)
        return LossOutput(loss, {"distill": loss.detach(), "c_mean": c.mean().detach(),
                                 "t_mean": t.float().mean().detach()})
