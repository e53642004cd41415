"""Deliberately broken losses, kept so the contract suite is seen to fail on each defect it exists to catch.

Each is a plausible mistake: the gradient routing is wrong while the loss value looks fine.
"""

import torch

import distillkit
from distillkit import LossOutput


def _renoised(ctx, detach: bool):
    x0 = ctx.student_x0.detach() if detach else ctx.student_x0
    t = ctx.sample_timesteps(x0.shape[0], 20, 979).to(x0.device)
    return ctx.backbone.schedule.add_noise(x0, ctx.randn_like(x0), t), t


class NoStopGradient(distillkit.Loss):
    """ADD-style distillation whose teacher target keeps the student's graph (no sg)."""

    name = "no_stop_gradient"

    def generator_loss(self, ctx):
        x_t, t = _renoised(ctx, detach=False)
        target = ctx.teacher.predict(x_t, t, ctx.cond, ctx.uncond).x0  # should be .target(...) on sg(x_t)
        loss = (ctx.student_x0 - target).pow(2).mean()
        return LossOutput(loss)


class NoGradShortcut(distillkit.Loss):
    """Claims SiD's path through the teacher but computes the teacher under no_grad."""

    name = "no_grad_shortcut"
    differentiates_through = frozenset({"teacher"})

    def generator_loss(self, ctx):
        x_t, t = _renoised(ctx, detach=False)
        with torch.no_grad():
            f = ctx.teacher.predict(x_t, t, ctx.cond, ctx.uncond).x0
        loss = ((ctx.student_x0 - f) * ctx.student_x0).mean()
        return LossOutput(loss)


class ThroughTeacher(distillkit.Loss):
    """The correct version of the two above for a SiD-like loss: declared, and really on the graph."""

    name = "through_teacher"
    differentiates_through = frozenset({"teacher"})

    def generator_loss(self, ctx):
        x_t, t = _renoised(ctx, detach=False)
        f = ctx.teacher.predict(x_t, t, ctx.cond, ctx.uncond).x0
        loss = ((f.detach() - ctx.student_x0) * f).mean()
        return LossOutput(loss)


class StudentGradientInCritic(distillkit.Loss):
    """Trains the fake score on a sample it re-makes with the student's graph in the critic phase."""

    name = "student_gradient_in_critic"
    critics = {"fake_score": "core.fake_score"}

    def critic_loss(self, ctx):
        x0 = ctx.student.predict(ctx.student_input, ctx.student_t, ctx.cond).x0  # not the detached sample
        t = ctx.sample_timesteps(x0.shape[0], 20, 979).to(x0.device)
        eps = ctx.randn_like(x0)
        x_t = ctx.backbone.schedule.add_noise(x0, eps, t)
        loss = (ctx.critics["fake_score"].predict(x_t, t, ctx.cond).eps - eps).pow(2).mean()
        return LossOutput(loss)


class Plugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        for cls in (NoStopGradient, NoGradShortcut, ThroughTeacher, StudentGradientInCritic):
            register(cls)


PLUGINS = {"broken": Plugin()}
