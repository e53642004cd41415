"""``sid.sid``: Score identity Distillation's generator loss and the training of its fake score.

One recipe entry covers both phases of SiD / SiD-LSG (arXiv 2404.04057, 2406.01561) and, with the
student's few-step settings, few-step SiD (arXiv 2505.12674):

* **critic phase** — the fake score f_ψ (``core.fake_score``, a full copy or an adapter on the shared
  base) learns the score of the student's distribution by denoising score matching on detached student
  samples, at its own CFG scale κ1, with prompt dropout when it needs an unconditional branch;
  ‖ε̂ − ε‖² summed per sample, batch mean (``sum / B`` in the code);
* **generator phase** — x_t = α_t x_g + σ_t ε keeps the student's graph; the teacher (κ4) and the fake
  score (κ2 = κ3) predict x0 *with gradients through their inputs* (their weights are frozen), and
  :func:`distillkit_sid.functional.sid_generator_loss` combines them. A ``no_grad`` teacher or fake score
  would compute a different loss: the gradient keeps Jacobian terms through both networks that depend
  on α (``through_networks = false`` drops them, as an ablation, and is then not SiD).

t ~ U{20..979} for both phases (SiD-LSG: ``torch.randint(20, 980)``).
"""

from __future__ import annotations

from typing import Optional

import pydantic
import torch

import distillkit
from distillkit_sid import draws
from distillkit_sid import guidance as strategies
from distillkit_sid import functional as Fn


class SiDConfig(pydantic.BaseModel):
    """``[[losses]] name = "sid.sid"`` → ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    alpha: float = pydantic.Field(1.2, description="α of L(α) = L(1) + (1−α)‖f_φ−f_ψ‖²/w [SiD paper: 1.2; the SD "
                                                   "scripts of SiD-LSG use 1.0]")
    lsg: float = pydantic.Field(1.0, gt=0, description="scale of the generator loss after Σ/B [SiD-LSG code: 1; "
                                                       "EDM SiD: 100]")
    fake_loss_scale: float = pydantic.Field(1.0, gt=0, description="scale of the fake score's loss after Σ/B "
                                                                   "(the code's `ls`: 1)")
    weight_floor: float = pydantic.Field(Fn.WEIGHT_FLOOR, gt=0, description="lower clip of w = mean|x_g − f_φ| "
                                                                            "[code: 1e-5]")
    t_min: int = pydantic.Field(20, ge=0, le=999, description="t ~ U{t_min..t_max} (inclusive) for both phases "
                                                              "[SiD-LSG code: 20]")
    t_max: int = pydantic.Field(979, ge=0, le=999, description="[SiD-LSG code: randint(20, 980), so 979]")
    guidance: strategies.Strategy = pydantic.Field(
        "lsg", description="'lsg' (scales below, each defaulting to [teacher] guidance_scale), 'zero_cfg' "
                           "((κ1, κ2=κ3, κ4) = (0, 0, 1)) or 'anti_cfg' (negative fake_scale)")
    fake_train_scale: Optional[float] = pydantic.Field(None, description="κ1: the fake score's CFG scale in its "
                                                                         "own training")
    fake_scale: Optional[float] = pydantic.Field(None, description="κ2 = κ3: the fake score's CFG scale in the "
                                                                   "generator loss (< 0 for anti_cfg)")
    teacher_scale: Optional[float] = pydantic.Field(None, description="κ4: the teacher's CFG scale in the "
                                                                      "generator loss")
    prompt_dropout: Optional[float] = pydantic.Field(
        None, ge=0, le=1, description="probability of the empty prompt in fake-score training; default 0.1 when "
                                      "a fake scale is not 1 [SiD-LSG code], else 0")
    through_networks: bool = pydantic.Field(
        True, description="differentiate through the teacher's and the fake score's inputs (SiD); false keeps only "
                          "the direct path (an ablation, not SiD)")

    _t_range = distillkit.ordered()  # t_min <= t_max

    @pydantic.model_validator(mode="after")
    def _guidance(self):
        strategies.check(self.guidance, self.fake_train_scale, self.fake_scale, self.teacher_scale)
        return self


class SiD(distillkit.Loss):
    """SiD's generator loss (generator phase) and its fake score's denoising loss (critic phase)."""

    name = "sid"
    Config = SiDConfig
    critics = {"fake_score": "core.fake_score"}

    def gradient_paths(self) -> frozenset[str]:
        return frozenset({"teacher", "fake_score"}) if self.config.through_networks else frozenset()

    def scales(self, ctx) -> strategies.Scales:
        c = self.config
        return strategies.resolve(c.guidance, ctx.teacher.guidance_scale, c.fake_train_scale, c.fake_scale,
                                c.teacher_scale, c.prompt_dropout)

    def generator_loss(self, ctx) -> distillkit.LossOutput:
        c = self.config
        s = self.scales(ctx)
        fake = ctx.critics["fake_score"]
        x_g = ctx.student_x0.float()
        t, eps = draws.noise(ctx, x_g, c.t_min, c.t_max)
        x_t = ctx.backbone.schedule.add_noise(x_g, eps, t)  # keeps the student's graph
        if c.through_networks:
            y_real = ctx.teacher.predict(x_t, t, ctx.cond, ctx.uncond, scale=s.teacher).x0
            y_fake = fake.predict(x_t, t, ctx.cond, ctx.uncond, scale=s.fake).x0
        else:
            y_real = ctx.teacher.target(x_t, t, ctx.cond, ctx.uncond, scale=s.teacher).x0
            with torch.no_grad():
                y_fake = fake.predict(x_t.detach(), t, ctx.cond, ctx.uncond, scale=s.fake).x0
        w = Fn.weight_factor(x_g, y_real, c.weight_floor)
        draws.publish_weight(ctx, c.t_min, c.t_max, w)
        loss = Fn.sid_generator_loss(x_g, y_real, y_fake, c.alpha, c.lsg, weight=w)
        with torch.no_grad():
            gap = (y_real.float() - y_fake.float()).pow(2).flatten(1).sum(dim=1).div(w).mean()
        return distillkit.LossOutput(loss, {"sid": loss.detach(), "weight_factor": w.mean(),
                                            "teacher_fake_gap": gap, "t_mean": t.float().mean()})

    def critic_loss(self, ctx) -> distillkit.LossOutput:
        c = self.config
        s = self.scales(ctx)
        fake = ctx.critics["fake_score"]
        x0 = ctx.student_x0.detach().float()
        t, eps = draws.noise(ctx, x0, c.t_min, c.t_max)
        cond = draws.publish_fake_conditioning(ctx, s.dropout)
        x_t = ctx.backbone.schedule.add_noise(x0, eps, t)
        eps_pred = fake.predict(x_t, t, cond, ctx.uncond, scale=s.fake_train).eps
        loss = Fn.fake_score_loss(eps_pred, eps, c.fake_loss_scale)
        return distillkit.LossOutput(loss, {"fake_score": loss.detach(), "t_mean": t.float().mean()})
