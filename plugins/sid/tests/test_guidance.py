"""The guidance strategies: which scales each one resolves to, which network branches each one calls, and
the generator loss they give against a computation written out by hand from direct UNet calls."""

import pydantic
import pytest
import torch

from distillkit import Phase
from distillkit_sid import guidance
from distillkit_sid.losses import SiD, SiDConfig
from sid_helpers import build_roles, call_log, context, student_x0


# -- resolution of the scales -------------------------------------------------------------------------
def test_lsg_scales_default_to_the_teacher_guidance_scale_and_each_can_be_set():
    s = guidance.resolve("lsg", 4.5)
    assert (s.fake_train, s.fake, s.teacher, s.dropout) == (4.5, 4.5, 4.5, 0.1)
    s = guidance.resolve("lsg", 4.5, fake_train_scale=1.0, fake_scale=1.0, teacher_scale=3.0)
    assert (s.fake_train, s.fake, s.teacher, s.dropout) == (1.0, 1.0, 3.0, 0.0)  # no fake CFG: no dropout
    assert guidance.resolve("lsg", 1.0).dropout == 0.0
    assert guidance.resolve("lsg", 2.0, prompt_dropout=0.3).dropout == 0.3


def test_zero_cfg_is_teacher_without_cfg_and_fake_without_text():
    s = guidance.resolve("zero_cfg", 7.5)  # the recipe's teacher scale does not matter
    assert (s.fake_train, s.fake, s.teacher) == (0.0, 0.0, 1.0)
    assert s.dropout == 0.0  # a fake score that only ever sees the empty prompt has nothing to drop


def test_anti_cfg_needs_an_explicit_negative_fake_scale():
    s = guidance.resolve("anti_cfg", 4.5, fake_scale=-1.0)
    assert (s.fake_train, s.fake, s.teacher, s.dropout) == (1.0, -1.0, 1.0, 0.1)
    assert guidance.resolve("anti_cfg", 4.5, fake_scale=-0.5, teacher_scale=2.0).teacher == 2.0


@pytest.mark.parametrize("params,message", [
    ({"guidance": "zero_cfg", "teacher_scale": 2.0}, "zero_cfg' fixes"),
    ({"guidance": "anti_cfg"}, "needs its negative fake-score scale"),
    ({"guidance": "anti_cfg", "fake_scale": 1.5}, "must be < 0"),
    ({"t_min": 900, "t_max": 100}, "must not exceed"),
    ({"guidance": "cfg"}, "lsg"),
])
def test_inconsistent_params_are_rejected_with_the_fix(params, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        SiDConfig(**params)


# -- which branches each strategy calls ----------------------------------------------------------------
def _generator_calls(roles, params):
    loss = SiD(SiDConfig(**params))
    ctx = context(roles, Phase.GENERATOR, student_x0(roles))
    with call_log(roles, ctx.uncond) as calls:
        loss.generator_loss(ctx)
    return calls


def _critic_calls(roles, params):
    loss = SiD(SiDConfig(**params))
    ctx = context(roles, Phase.CRITIC, student_x0(roles).detach())
    with call_log(roles, ctx.uncond) as calls:
        loss.critic_loss(ctx)
    return calls


def test_zero_cfg_calls_the_plain_conditional_teacher_and_only_the_unconditional_fake_branch(tiny_sd15):
    roles = build_roles(tiny_sd15, teacher_scale=7.5)
    calls = _generator_calls(roles, {"guidance": "zero_cfg"})
    teacher = [c for c in calls if c[0] == "teacher"]
    fake = [c for c in calls if c[0] == "fake"]
    assert len(teacher) == 1 and teacher[0][2] == [False, False]  # one batch of B, the prompts only
    assert len(fake) == 1 and fake[0][2] == [True, True]  # one batch of B, the empty prompt only
    assert teacher[0][3] and fake[0][3]  # both on the student's graph
    critic = _critic_calls(roles, {"guidance": "zero_cfg"})
    assert [c[0] for c in critic] == ["fake"] and critic[0][2] == [True, True]


def test_lsg_runs_both_branches_of_both_networks_and_drops_prompts_for_the_fake(tiny_sd15):
    roles = build_roles(tiny_sd15, teacher_scale=2.0)
    calls = _generator_calls(roles, {})
    assert sorted(c[0] for c in calls) == ["fake", "teacher"]
    for c in calls:  # CFG: one batch of 2B, the prompts then the empty prompt
        assert c[2] == [False, False, True, True]
    everything = _critic_calls(roles, {"prompt_dropout": 1.0})
    assert everything[0][2] == [True, True, True, True]  # every training prompt dropped
    nothing = _critic_calls(roles, {"prompt_dropout": 0.0})
    assert nothing[0][2] == [False, False, True, True]


def test_the_fake_score_trains_at_kappa1_and_is_used_at_kappa2(tiny_sd15):
    roles = build_roles(tiny_sd15, teacher_scale=2.0)
    params = {"fake_train_scale": 1.0, "fake_scale": 3.0, "teacher_scale": 1.0, "prompt_dropout": 0.0}
    (train,) = _critic_calls(roles, params)
    assert train[2] == [False, False]  # κ1 = 1: the prompts alone
    used = [c for c in _generator_calls(roles, params) if c[0] == "fake"]
    assert used[0][2] == [False, False, True, True]  # κ2 = 3: both branches


def test_plain_scales_call_one_branch(tiny_sd15):
    roles = build_roles(tiny_sd15, teacher_scale=1.0)
    calls = _generator_calls(roles, {})
    assert [len(c[2]) for c in calls] == [2, 2] and not any(any(c[2]) for c in calls)


# -- the loss they give, against direct UNet calls ---------------------------------------------------
def _by_hand(roles, ctx, x, t, eps, teacher_scale, fake_scale, alpha):
    """The SiD generator loss written out from single-branch UNet calls, with CFG combined here."""
    b = roles.backbone
    with torch.no_grad():
        x_t = b.schedule.add_noise(x, eps, t)

        def x0(unet, cond):
            return b.denoise(unet, x_t, t, cond).x0

        t_c, t_u = x0(roles.teacher.unet, ctx.cond), x0(roles.teacher.unet, ctx.uncond)
        f_c, f_u = x0(roles.fake.unet, ctx.cond), x0(roles.fake.unet, ctx.uncond)
        y_real = t_u + teacher_scale * (t_c - t_u)
        y_fake = f_u + fake_scale * (f_c - f_u)
        w = (x - y_real).abs().flatten(1).mean(1)
        d = y_real - y_fake
        return ((d * ((y_real - x) - alpha * d)).flatten(1).sum(1) / w).mean()


@pytest.mark.parametrize("params,scales", [
    ({"guidance": "anti_cfg", "fake_scale": -1.0, "alpha": 1.2}, (1.0, -1.0)),  # f_ψ = 2 f_u − f_c
    ({"guidance": "lsg", "teacher_scale": 3.0, "fake_scale": 1.5, "alpha": 1.0}, (3.0, 1.5)),
    ({"guidance": "zero_cfg", "alpha": 0.0}, (1.0, 0.0)),
])
def test_generator_loss_matches_the_formula_from_single_branch_calls(tiny_sd15, params, scales):
    roles = build_roles(tiny_sd15, teacher_scale=2.0)
    x = student_x0(roles)
    ctx = context(roles, Phase.GENERATOR, x)
    out = SiD(SiDConfig(**params)).generator_loss(ctx)
    (key,) = [k for k in ctx.memo if k[0] == "sid.noise"]
    t, eps = ctx.memo[key]
    want = _by_hand(roles, ctx, x.detach(), t, eps, *scales, params["alpha"])
    assert out.total.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    if params["guidance"] == "anti_cfg":  # the sign matters: +1 in the fake score gives another loss
        assert abs(_by_hand(roles, ctx, x.detach(), t, eps, 1.0, 1.0, 1.2).item() - want.item()) > 1e-3
