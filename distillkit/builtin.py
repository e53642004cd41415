"""The core's own plugin (entry point ``core``): model families and the baseline loss.

Registered through the same entry-point group and hooks as any third-party plugin.
"""

from __future__ import annotations

import pydantic

from distillkit.hookspecs import hookimpl
from distillkit.losses.base import Loss, LossOutput, StepContext


class TeacherRegression(Loss):
    """Baseline: regress the student's x0 onto the (CFG) teacher's x0 at the same noisy input.

    L = mean ||x̂_θ(x_s, s) − sg(x̂_ψ(x_s, s))||². One teacher call per step; no critic. It is the
    simplest objective that transfers the teacher's denoiser into the few-step student and the
    reference against which the adversarial and score-distillation methods should improve.
    """

    name = "regression"

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        space: str = pydantic.Field("latent", pattern="^(latent|pixel)$")

    def gradient_paths(self) -> frozenset[str]:
        return frozenset({"vae"}) if self.config.space == "pixel" else frozenset()

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        target = ctx.teacher.target(ctx.student_input, ctx.student_t, ctx.cond, ctx.uncond).x0
        x0 = ctx.student_x0
        if self.config.space == "pixel":
            x0, target = ctx.student_pixels(), ctx.backbone.decode(target)
        mse = (x0.float() - target.float()).pow(2).mean()
        return LossOutput(mse, {"mse": mse.detach()})


@hookimpl
def register_losses(register):
    register(TeacherRegression)
    from distillkit.toy.denoising import Denoising  # plain DSM: what `distillkit teach` trains a teacher with

    register(Denoising)


@hookimpl
def register_critics(register):
    from distillkit.roles.fake_score import FakeScore  # shared by SiD, VSD and DMD2 (docs/methods.md)
    from distillkit.roles.gan_head import GANHead  # DMD2's bottleneck classifier, also SiD's option

    register(FakeScore)
    register(GANHead)


@hookimpl
def register_backbones(register):
    from distillkit.models.pixel import PixelBackbone
    from distillkit.models.sd15 import SD15Backbone
    from distillkit.models.sdxl import SDXLBackbone

    register(SD15Backbone)
    register(SDXLBackbone)
    register(PixelBackbone)
    from distillkit.toy.backbone import ToyBackbone, ToyExactBackbone  # the toy world (docs/toy-world.md)

    register(ToyBackbone)
    register(ToyExactBackbone)
