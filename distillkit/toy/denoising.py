"""``core.denoising``: plain denoising score matching, to train a teacher (``distillkit teach``).

    L = E_{x0, t, ε} || f_θ(α_t x0 + σ_t ε, t, c) − target ||²,   t ~ U{t_min..t_max}

with the target in the network's own parameterisation (ε for an ε-prediction UNet, v or x0 likewise),
which is how the DDPM / Stable Diffusion teachers were trained. The prompt is replaced by the empty
prompt with probability ``prompt_dropout`` (10% in SD's training), so one network learns both branches
that classifier-free guidance combines. The "student" of such a run is the network being trained; the
loss runs it itself on noised real images and never reads the engine's few-step student sample.

Nothing here is specific to the toy world: the same loss fine-tunes any family's UNet on its data.
"""

from __future__ import annotations

import pydantic

from distillkit.config_base import ordered
from distillkit.diffusion.param import v_from_x0_eps
from distillkit.losses.base import Loss, LossOutput, StepContext


class DenoisingConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    prompt_dropout: float = pydantic.Field(0.1, ge=0, le=1, description="share of samples trained with the empty "
                                                                        "prompt (classifier-free guidance)")
    t_min: int = pydantic.Field(0, ge=0, description="smallest training timestep")
    t_max: int = pydantic.Field(999, ge=0, description="largest training timestep (inclusive)")

    _t_range = ordered()  # t_min <= t_max


class Denoising(Loss):
    """Denoising score matching of the student network on real data (see the module docstring)."""

    name = "denoising"
    Config = DenoisingConfig
    needs_real_data = True

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        cfg = self.config
        x0 = ctx.real_x0
        if x0 is None:
            raise ValueError("core.denoising trains on real data: set [data] images or dataset in the recipe")
        n = x0.shape[0]
        t = ctx.sample_timesteps(n, cfg.t_min, cfg.t_max).to(x0.device)
        eps = ctx.randn_like(x0)
        x_t = ctx.backbone.schedule.add_noise(x0, eps, t)
        drop = ctx.rand(n) < cfg.prompt_dropout
        cond = ctx.cond.where(drop, ctx.uncond) if bool(drop.any()) else ctx.cond
        pred = ctx.student.predict(x_t, t, cond)
        if pred.kind == "epsilon":
            target = eps
        elif pred.kind == "sample":
            target = x0
        else:
            alpha, sigma = ctx.backbone.schedule.coefficients(t, x0)
            target = v_from_x0_eps(x0, eps, alpha, sigma)
        mse = (pred.output.float() - target.float()).pow(2).mean()
        return LossOutput(mse, {"mse": mse.detach(), "dropped": drop.float().mean()})
