"""A minimal loss that trains ``core.fake_score`` by denoising score matching, so the critic contract can run
on the fake score before (and independently of) the methods that use it."""

import distillkit
from distillkit import LossOutput


class FakeScoreDSM(distillkit.Loss):
    name = "fake_score_dsm"
    critics = {"fake_score": "core.fake_score"}

    def critic_loss(self, ctx):
        fake = ctx.critics["fake_score"]
        x0 = ctx.student_x0
        t = ctx.sample_timesteps(x0.shape[0], 20, 979).to(x0.device)
        loss = fake.denoising_loss(x0, t, ctx.randn_like(x0), ctx.cond)
        return LossOutput(loss, {"dsm": loss.detach()})


class Plugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        register(FakeScoreDSM)


PLUGINS = {"probe": Plugin()}
