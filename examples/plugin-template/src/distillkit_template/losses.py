"""The loss: a diffusion-GAN on noised latents, anchored to the teacher.

Generator phase (trains the student):

    L_G = softplus(-D(x_t, t)) + anchor_weight * || x̂θ - sg(teacher_x0(x_t, t)) ||²,
    x_t = α_t x̂θ + σ_t ε,  t ~ U{t_min..t_max}

The GAN term is the non-saturating logistic loss; its gradient reaches the student *through* the frozen
discriminator. The anchor pulls the student towards the teacher's denoised estimate of the same noisy
sample, a constant target (``teacher.target``, no gradient into or through the teacher).

Critic phase (trains the discriminator, on the detached student sample):

    L_D = softplus(-D(real_t, t)) + softplus(D(fake_t, t)),

real and student latents noised to the same t with independent noise.
"""

from __future__ import annotations

import pydantic
import torch

import distillkit
from distillkit_template.functional import discriminator_logistic, generator_logistic


class AnchoredGANConfig(pydantic.BaseModel):
    """``[[losses]] name = "template.anchored_gan"`` -> ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    t_min: int = pydantic.Field(100, ge=0, description="lowest timestep the discriminator's inputs are noised to")
    t_max: int = pydantic.Field(900, ge=0, description="highest timestep (inclusive)")
    anchor_weight: float = pydantic.Field(
        1.0, ge=0, allow_inf_nan=False,
        description="weight of the teacher anchor ||x̂θ - sg(teacher x̂0)||² beside the GAN term; 0 = GAN only")

    _t_range = distillkit.ordered()  # t_min <= t_max


class AnchoredGAN(distillkit.Loss):
    """Diffusion-GAN on noised latents plus a teacher anchor: the student learns to fool a time-aware
    discriminator and stays close to the teacher's denoised estimate of its own re-noised sample."""

    name = "anchored_gan"
    Config = AnchoredGANConfig
    critic = "template.noisy_discriminator"  # one critic, ctx.critic; the recipe binds an instance to it
    needs_real_data = True  # reads ctx.real_x0: the recipe must give [data] images
    differentiates_through = frozenset({"critic"})  # the GAN term's graph passes through the frozen critic

    def _timesteps(self, ctx: distillkit.StepContext, n: int) -> torch.Tensor:
        # Seeded per (run seed, step, rank, phase, loss): a resumed run draws exactly the same values.
        return ctx.sample_timesteps(n, self.config.t_min, self.config.t_max).to(ctx.device)

    def generator_loss(self, ctx: distillkit.StepContext) -> distillkit.LossOutput:
        x0 = ctx.student_x0  # carries the student's graph in this phase
        t = self._timesteps(ctx, x0.shape[0])
        x_t = ctx.backbone.schedule.add_noise(x0, ctx.randn_like(x0), t)
        gan = generator_logistic(ctx.critic(x_t, t, ctx.cond))
        total, terms = gan, {"gan": gan.detach()}
        if self.config.anchor_weight > 0:
            target = ctx.teacher.target(x_t, t, ctx.cond, ctx.uncond).x0  # a constant: no_grad inside
            anchor = (x0.float() - target.float()).pow(2).mean()
            total = total + self.config.anchor_weight * anchor
            terms["anchor"] = anchor.detach()
        return distillkit.LossOutput(total, terms)

    def critic_loss(self, ctx: distillkit.StepContext) -> distillkit.LossOutput:
        fake, real = ctx.student_x0, ctx.real_x0  # the student's sample is detached in this phase
        t = self._timesteps(ctx, fake.shape[0])
        schedule = ctx.backbone.schedule
        real_logits = ctx.critic(schedule.add_noise(real, ctx.randn_like(real), t), t, ctx.cond)
        fake_logits = ctx.critic(schedule.add_noise(fake, ctx.randn_like(fake), t), t, ctx.cond)
        d_real, d_fake = discriminator_logistic(real_logits, fake_logits)
        return distillkit.LossOutput(d_real + d_fake, {"d_real": d_real.detach(), "d_fake": d_fake.detach(),
                                                       "real_logit": real_logits.detach().mean(),
                                                       "fake_logit": fake_logits.detach().mean()})
