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


class GANProbe(distillkit.Loss):
    """Trains ``core.gan_head`` (and the fake score's encoder under it) to tell real from student latents."""

    name = "gan_probe"
    critics = {"fake_score": "core.fake_score", "gan_head": "core.gan_head"}
    needs_real_data = True

    def critic_loss(self, ctx):
        from distillkit.losses.gan import discriminator_logistic

        fake, head = ctx.critics["fake_score"], ctx.critics["gan_head"]
        x0 = ctx.student_x0
        t = ctx.sample_timesteps(x0.shape[0], 0, 999).to(x0.device)
        noise = ctx.randn_like(x0)
        schedule = ctx.backbone.schedule

        def logits(x):
            return head(fake.features(schedule.add_noise(x, noise, t), t, ctx.cond).mid)

        real, fake_term = discriminator_logistic(logits(ctx.real_x0), logits(x0))
        loss = (real + fake_term).mean()
        return LossOutput(loss, {"d": loss.detach()})


class Plugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        register(FakeScoreDSM)
        register(GANProbe)


PLUGINS = {"probe": Plugin()}
