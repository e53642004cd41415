"""The diffusion-GAN losses against formulas written out from direct encoder calls: the same t and ε for real
and fake (and as ``sid.sid``'s), the conditional branch, SiD's weight on the generator side, the clamps."""

import pytest
import torch
import torch.nn.functional as F

from distillkit import BuildEnv, DistillkitError, Phase
from distillkit.roles.gan_head import GANHead, GANHeadConfig
from distillkit_sid.gan import DiffusionGAN, DiffusionGANHead, GANConfig
from distillkit_sid.losses import SiD, SiDConfig
from sid_helpers import RES, build_roles, call_log, context, student_x0


def _draw(ctx):
    (key,) = [k for k in ctx.memo if k[0] == "sid.noise"]
    return ctx.memo[key]


def _logits(roles, x, t, eps, cond, head=None):
    with torch.no_grad():
        mid = roles.backbone.features(roles.fake.unet, roles.backbone.schedule.add_noise(x, eps, t), t, cond).mid
        return head(mid) if head is not None else mid.float().mean(dim=1)


def _real(roles):
    g = torch.Generator().manual_seed(5)
    return torch.randn(roles.backbone.sample_shape(2, RES), generator=g)


def test_generator_term_by_hand_with_sids_weight_and_draw(tiny_sd15):
    roles = build_roles(tiny_sd15)
    x = student_x0(roles)
    ctx = context(roles, Phase.GENERATOR, x)
    SiD(SiDConfig(teacher_scale=3.0, fake_scale=1.0)).generator_loss(ctx)  # first: it computes w and draws (t, ε)
    out = DiffusionGAN(GANConfig(scale=0.5)).generator_loss(ctx)
    t, eps = _draw(ctx)
    w = ctx.memo[("sid.weight", 20, 979)]
    logits = _logits(roles, x.detach(), t, eps, ctx.cond).clamp(-10, 10)
    per = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none").flatten(1).mean(1)
    want = (per / w * x[0].numel()).mean() * 0.5
    assert out.total.item() == pytest.approx(want.item(), rel=1e-5)


def test_discriminator_term_by_hand_real_and_fake_share_t_and_eps(tiny_sd15):
    roles = build_roles(tiny_sd15)
    x, real = student_x0(roles).detach(), _real(roles)
    ctx = context(roles, Phase.CRITIC, x, real_x0=real)
    SiD(SiDConfig()).critic_loss(ctx)
    out = DiffusionGAN(GANConfig()).critic_loss(ctx)
    t, eps = _draw(ctx)  # the one draw of the phase: sid.sid's, reused for both branches of the GAN
    cond = ctx.memo[("sid.fake_cond",)]
    bce = F.binary_cross_entropy_with_logits
    lr, lf = _logits(roles, real, t, eps, cond).clamp(-10, 10), _logits(roles, x, t, eps, cond).clamp(-10, 10)
    n = x[0].numel()
    want_real = (bce(lr, torch.ones_like(lr), reduction="none").flatten(1).mean(1) / 2 * n).mean()
    want_fake = (bce(lf, torch.zeros_like(lf), reduction="none").flatten(1).mean(1) / 2 * n).mean()
    assert out.terms["d_real"].item() == pytest.approx(want_real.item(), rel=1e-5)
    assert out.terms["d_fake"].item() == pytest.approx(want_fake.item(), rel=1e-5)
    # real = fake gives identical logits only if both are noised with the same t and ε
    same = context(roles, Phase.CRITIC, x, real_x0=x.clone())
    terms = DiffusionGAN(GANConfig()).critic_loss(same).terms
    assert terms["logits_real_mean"] == terms["logits_fake_mean"]


def test_logits_come_from_the_conditional_branch_with_the_fake_scores_training_prompts(tiny_sd15):
    roles = build_roles(tiny_sd15)
    x = student_x0(roles).detach()
    ctx = context(roles, Phase.CRITIC, x, real_x0=_real(roles))
    SiD(SiDConfig(prompt_dropout=1.0)).critic_loss(ctx)  # every prompt of the fake score's training dropped
    with call_log(roles, ctx.uncond) as calls:
        DiffusionGAN(GANConfig()).critic_loss(ctx)
    assert [(c[0], c[1], c[2]) for c in calls] == [("fake", "features", [True, True])] * 2
    gen = context(roles, Phase.GENERATOR, student_x0(roles))
    with call_log(roles, gen.uncond) as calls:
        DiffusionGAN(GANConfig(weighting="none")).generator_loss(gen)
    assert [(c[0], c[1], c[2], c[3]) for c in calls] == [("fake", "features", [False, False], True)]


def test_sid_weighting_without_sid_is_an_error_that_names_the_fix(tiny_sd15):
    roles = build_roles(tiny_sd15)
    ctx = context(roles, Phase.GENERATOR, student_x0(roles))
    with pytest.raises(DistillkitError, match="list sid.sid .* before sid.gan"):
        DiffusionGAN(GANConfig()).generator_loss(ctx)


def test_the_conv_head_variant_reads_the_same_bottleneck(tiny_sd15):
    roles = build_roles(tiny_sd15)
    env = BuildEnv(backbone=roles.backbone, teacher=roles.teacher, student=roles.student, resolution=RES,
                   device=torch.device("cpu"), role="gan_head", seed=2)
    head = GANHead(GANHeadConfig(num_convs=1), env)
    x = student_x0(roles)
    ctx = context(roles, Phase.GENERATOR, x, extra_critics={"gan_head": head})
    out = DiffusionGANHead(GANConfig(weighting="none", clamp=0.0)).generator_loss(ctx)
    t, eps = _draw(ctx)
    with torch.no_grad():
        logits = _logits(roles, x.detach(), t, eps, ctx.cond, head)
    want = (F.softplus(-logits).flatten(1).mean(1) * x[0].numel()).mean()
    assert out.total.item() == pytest.approx(want.item(), rel=1e-5)
