"""Which network receives which gradient (docs/methods.md, roles and gradients), on the tiny SD1.5 / SDXL backbones."""

from dataclasses import dataclass

import pytest
import torch

import distillkit
from distillkit import BuildEnv, Phase, StepContext, Student, Teacher
from distillkit_add import functional as Fn
from distillkit_add.discriminator import Discriminator
from distillkit_add.losses import Adversarial, Distill

PROMPTS = ["a red circle", "a blue square"]
RES = 64


@dataclass
class Setup:
    backbone: object
    teacher: Teacher
    student: Student
    disc: Discriminator
    batch: dict
    sample: tuple


def make_setup(backbone, tiny_disc_params, **disc_params) -> Setup:
    teacher = Teacher(backbone, backbone.teacher_unet, 3.0)
    student = Student.from_teacher(backbone, backbone.teacher_unet, [999, 749, 499, 249])
    env = BuildEnv(backbone=backbone, teacher=teacher, student=student, resolution=RES, device=torch.device("cpu"))
    disc = Discriminator.build(Discriminator.Config(**{**tiny_disc_params, **disc_params}), env)
    pixels = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"prompts": PROMPTS, "pixels": pixels, "real_x0": backbone.encode_images(pixels),
             "cond": backbone.encode_prompts(PROMPTS, RES), "uncond": backbone.empty_conditioning(2, RES)}
    sample = student.training_sample("real", batch["cond"], backbone.sample_shape(2, RES),
                                     torch.Generator().manual_seed(1), real_x0=batch["real_x0"])
    return Setup(backbone, teacher, student, disc, batch, sample)


def context(s: Setup, phase: Phase, seed: int = 2, **overrides) -> StepContext:
    x0, t, x_in = s.sample.x0, s.sample.t, s.sample.input
    if phase is Phase.CRITIC:
        x0, x_in = x0.detach(), x_in.detach()
    kwargs = dict(phase=phase, step=0, backbone=s.backbone, teacher=s.teacher, student=s.student,
                  prompts=s.batch["prompts"], cond=s.batch["cond"], uncond=s.batch["uncond"], resolution=RES,
                  student_x0=x0, student_t=t, student_input=x_in, real_x0=s.batch["real_x0"],
                  real_pixels=s.batch["pixels"], critic=s.disc, generator=torch.Generator().manual_seed(seed))
    kwargs.update(overrides)
    return StepContext(**kwargs)


def set_phase(s: Setup, phase: Phase) -> None:
    """What the engine toggles: only the phase's own trainable parameters require grad."""
    for p in s.student.trainable_parameters():
        p.requires_grad_(phase is Phase.GENERATOR)
    for p in s.disc.trainable_parameters():
        p.requires_grad_(phase is Phase.CRITIC)


def frozen_modules(s: Setup) -> dict:
    return {**s.backbone.frozen_modules(), "feature_net": s.disc.net}


def student_grad_norm(s: Setup) -> float:
    return sum(float(p.grad.abs().sum()) for p in s.student.trainable_parameters() if p.grad is not None)


@pytest.fixture
def sd15_setup(tiny_sd15, tiny_disc_params):
    return make_setup(tiny_sd15, tiny_disc_params)


# -- registration ---------------------------------------------------------------------------------------
def test_registered_through_the_public_hooks():
    reg = distillkit.Registry.discover()
    assert reg.loss("add.adversarial") is Adversarial
    assert reg.loss("add.distill") is Distill
    assert reg.critic("add.discriminator") is Discriminator
    assert Adversarial.critic == "add.discriminator" and Adversarial.needs_real_data
    assert Distill.critic is None and Adversarial.has_generator_term() and Distill.has_generator_term()
    assert Adversarial.has_critic_term() and not Distill.has_critic_term()


# -- generator phase ----------------------------------------------------------------------------------------
def test_generator_phase_trains_the_student_only(sd15_setup):
    s = sd15_setup
    set_phase(s, Phase.GENERATOR)
    adv = Adversarial().generator_loss(context(s, Phase.GENERATOR, seed=2))
    dist = Distill().generator_loss(context(s, Phase.GENERATOR, seed=3))
    assert torch.isfinite(adv.total) and torch.isfinite(dist.total)
    assert set(adv.terms) == {"g_adv", "logits_fake_mean"} and set(dist.terms) == {"distill", "c_mean", "t_mean"}
    (adv.total + 2.5 * dist.total).backward()
    assert student_grad_norm(s) > 0
    assert s.student.unet.module.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in s.disc.parameters())  # heads frozen for this phase, F frozen
    for name, module in frozen_modules(s).items():
        assert all(p.grad is None for p in module.parameters()), name


@pytest.mark.parametrize("which", ["adversarial", "distill"])
def test_each_generator_term_alone_reaches_the_student(sd15_setup, which):
    s = sd15_setup
    set_phase(s, Phase.GENERATOR)
    loss = Adversarial() if which == "adversarial" else Distill()
    loss.generator_loss(context(s, Phase.GENERATOR)).total.backward()
    assert student_grad_norm(s) > 0


# -- critic phase -------------------------------------------------------------------------------------------
def test_critic_phase_trains_the_heads_only(sd15_setup):
    s = sd15_setup
    set_phase(s, Phase.CRITIC)
    out = Adversarial().critic_loss(context(s, Phase.CRITIC))
    assert torch.isfinite(out.total)
    assert set(out.terms) == {"d_real", "d_fake", "r1", "logits_real_mean", "logits_fake_mean"}
    out.total.backward()
    assert all(p.grad is not None for p in s.disc.heads[0].main.parameters())
    assert sum(float(p.grad.abs().sum()) for p in s.disc.trainable_parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in s.disc.net.parameters())
    assert all(p.grad is None for p in s.student.unet.parameters())
    for name, module in frozen_modules(s).items():
        assert all(p.grad is None for p in module.parameters()), name


def test_critic_total_is_hinge_plus_gamma_r1(tiny_sd15, tiny_disc_params):
    s = make_setup(tiny_sd15, tiny_disc_params, r1_gamma=0.5)
    set_phase(s, Phase.CRITIC)
    out = Adversarial().critic_loss(context(s, Phase.CRITIC))
    expected = out.terms["d_real"] + out.terms["d_fake"] + 0.5 * out.terms["r1"]
    torch.testing.assert_close(out.total.detach(), expected)
    assert out.terms["r1"] > 0
    # γ = 0 drops R1 entirely (no double backward)
    s0 = make_setup(tiny_sd15, tiny_disc_params, r1_gamma=0.0)
    set_phase(s0, Phase.CRITIC)
    assert "r1" not in Adversarial().critic_loss(context(s0, Phase.CRITIC)).terms


@pytest.mark.parametrize("augment", [True, False])
def test_real_and_fake_branches_get_independent_augmentations(tiny_sd15, tiny_disc_params, augment):
    # The fake sample is set to the real image: identical augmentation would give identical logits. Eval
    # mode so the spectral-norm power iteration does not change the heads between the two branches.
    params = {} if augment else {"augment": None, "crop_prob": 0.0}
    s = make_setup(tiny_sd15, tiny_disc_params, **params)
    s.disc.eval()
    set_phase(s, Phase.CRITIC)
    ctx = context(s, Phase.CRITIC, student_x0=s.batch["real_x0"])
    ctx.memo["student_pixels"] = s.batch["pixels"]
    out = Adversarial().critic_loss(ctx)
    same = torch.isclose(out.terms["logits_real_mean"], out.terms["logits_fake_mean"])
    assert bool(same) is not augment


class SameConditioningForEveryCritic(Adversarial):
    """A deliberately broken loss (kept as a fixture): it caches the conditioning under one key for all
    discriminators, so a second discriminator with other encoders would be handed the first one's c."""

    def _condition(self, ctx, disc):
        return ctx.cached("add.discriminator.condition",
                          lambda: disc.condition(ctx.prompts, ctx.cond, self._real(ctx)), across_phases=True)


def _shared_vs_alone(s, tiny_disc_params, loss_cls):
    """Generator loss of a second discriminator computed after a first one in the same step (sharing the
    step's memo, as the engine does) and computed alone."""
    env = BuildEnv(backbone=s.backbone, teacher=s.teacher, student=s.student, resolution=RES,
                   device=torch.device("cpu"))
    other = Discriminator.build(Discriminator.Config(**tiny_disc_params, text_conditioning=False), env)
    s.disc.eval(), other.eval()  # no spectral-norm power iteration between the calls compared
    step_memo: dict = {}  # the engine's per-step, cross-phase memo (ctx.batch_memo)
    with torch.no_grad():
        loss_cls().generator_loss(context(s, Phase.GENERATOR, batch_memo=step_memo))
        shared = loss_cls().generator_loss(context(s, Phase.GENERATOR, critic=other, batch_memo=step_memo)).total
        alone = loss_cls().generator_loss(context(s, Phase.GENERATOR, critic=other)).total
    return shared, alone


def test_two_discriminators_sharing_a_step_memo_each_get_their_own_conditioning(sd15_setup, tiny_disc_params):
    shared, alone = _shared_vs_alone(sd15_setup, tiny_disc_params, Adversarial)
    torch.testing.assert_close(shared, alone)


def test_the_conditioning_check_catches_a_cache_shared_by_all_critics(sd15_setup, tiny_disc_params):
    # The same check on the broken fixture fails: the second discriminator is handed the first one's c
    # (here of another size, so its projection cannot even take it).
    with pytest.raises((AssertionError, RuntimeError)):
        shared, alone = _shared_vs_alone(sd15_setup, tiny_disc_params, SameConditioningForEveryCritic)
        torch.testing.assert_close(shared, alone)


# -- the distillation loss wired to a real teacher -------------------------------------------------------------
def _replay_draws(ctx_seed: int, x0: torch.Tensor, t_min=20, t_max=980):
    """The (t, ε') a Distill call draws from a fresh context generator with ``ctx_seed``."""
    g = torch.Generator().manual_seed(ctx_seed)
    t = torch.randint(t_min, t_max + 1, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return t, eps


def test_distill_latent_sds_gradient_is_the_guided_sds_direction(sd15_setup):
    # ADD appendix A through the real (tiny) teacher: ∇_x̂ L = w(t)(ε̂_cfg(x_t) − ε')/B in latent space.
    s = sd15_setup
    x0 = s.sample.x0.detach().clone().requires_grad_(True)
    ctx = context(s, Phase.GENERATOR, seed=5, student_x0=x0)
    loss = Distill(Distill.Config(weighting="sds", space="latent")).generator_loss(ctx)
    loss.total.backward()
    t, eps = _replay_draws(5, x0)
    alpha, sigma = s.backbone.schedule.coefficients(t, x0)
    x_t = alpha * x0.detach() + sigma * eps
    eps_hat = s.teacher.predict(x_t, t, s.batch["cond"], s.batch["uncond"]).eps.detach()  # CFG 3.0
    expected = sigma.pow(2) * (eps_hat - eps) / 2
    torch.testing.assert_close(x0.grad, expected, rtol=1e-3, atol=1e-5)
    assert loss.terms["t_mean"].item() == pytest.approx(t.float().mean().item())


def test_distill_exp_latent_value_and_guidance_override(sd15_setup):
    s = sd15_setup
    x0 = s.sample.x0.detach()
    for scale in (None, 1.0):
        ctx = context(s, Phase.GENERATOR, seed=6, student_x0=x0)
        out = Distill(Distill.Config(space="latent", guidance_scale=scale)).generator_loss(ctx)
        t, eps = _replay_draws(6, x0)
        alpha, sigma = s.backbone.schedule.coefficients(t, x0)
        x_t = alpha * x0 + sigma * eps
        target = s.teacher.predict(x_t, t, s.batch["cond"], s.batch["uncond"], scale=scale).x0
        expected = (alpha.reshape(-1) * (x0 - target).pow(2).flatten(1).sum(1)).mean()
        torch.testing.assert_close(out.total, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["exp", "sds", "nfsd"])
@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_distill_runs_for_every_weighting_and_space(sd15_setup, weighting, space):
    s = sd15_setup
    set_phase(s, Phase.GENERATOR)
    cfg = Distill.Config(weighting=weighting, space=space, sds_weight="uniform" if weighting == "sds" else "sigma2",
                         reduction="mean" if space == "pixel" else "sum")
    out = Distill(cfg).generator_loss(context(s, Phase.GENERATOR))
    assert torch.isfinite(out.total) and out.total > 0
    out.total.backward()
    assert student_grad_norm(s) > 0


def test_nfsd_uses_the_negative_prompt_branch_above_t_200(sd15_setup):
    # The same draws with a different negative prompt change the loss only through δ_D above t = 200.
    s = sd15_setup
    x0 = s.sample.x0.detach()
    vals = []
    for neg in ("ugly", "blurry dark"):
        cfg = Distill.Config(weighting="nfsd", space="latent", t_min=500, t_max=900, nfsd_negative_prompt=neg)
        vals.append(Distill(cfg).generator_loss(context(s, Phase.GENERATOR, seed=7, student_x0=x0)).total)
    assert vals[0] != vals[1]
    low = []
    for neg in ("ugly", "blurry dark"):
        cfg = Distill.Config(weighting="nfsd", space="latent", t_min=20, t_max=150, nfsd_negative_prompt=neg)
        low.append(Distill(cfg).generator_loss(context(s, Phase.GENERATOR, seed=7, student_x0=x0)).total)
    torch.testing.assert_close(low[0], low[1])


def test_distill_config_rejects_an_empty_range():
    with pytest.raises(ValueError, match="t_min"):
        Distill.Config(t_min=900, t_max=100)


# -- SDXL: pooled text embedding, micro-conditioning in the NFSD batch -------------------------------------------
def test_sdxl_generator_and_critic_phases(tiny_sdxl, tiny_disc_params):
    s = make_setup(tiny_sdxl, tiny_disc_params)
    assert s.disc.text_encoder.dim == s.batch["cond"].pooled.shape[-1]
    set_phase(s, Phase.GENERATOR)
    total = Adversarial().generator_loss(context(s, Phase.GENERATOR)).total
    total = total + 2.5 * Distill(Distill.Config(weighting="nfsd")).generator_loss(
        context(s, Phase.GENERATOR, seed=3)).total
    total.backward()
    assert student_grad_norm(s) > 0
    assert all(p.grad is None for p in s.disc.parameters())
    set_phase(s, Phase.CRITIC)
    s.student.unet.module.zero_grad(set_to_none=True)
    Adversarial().critic_loss(context(s, Phase.CRITIC)).total.backward()
    assert all(p.grad is None for p in s.student.unet.parameters())
    assert any(p.grad is not None for p in s.disc.trainable_parameters())


def test_hinge_values_match_functional(sd15_setup):
    # The loss is exactly the functional hinge on the critic's logits (no hidden scaling). Eval mode:
    # in train mode each forward advances the spectral-norm power iteration, so two calls differ slightly.
    s = sd15_setup
    s.disc.eval()
    set_phase(s, Phase.GENERATOR)
    ctx = context(s, Phase.GENERATOR, seed=9)
    out = Adversarial().generator_loss(ctx)
    ctx2 = context(s, Phase.GENERATOR, seed=9)
    c = s.disc.condition(PROMPTS, s.batch["cond"], s.batch["pixels"])
    logits = s.disc(s.disc.features(ctx2.student_pixels(), ctx2.generator), c)
    torch.testing.assert_close(out.total, Fn.hinge_g_loss(logits, "paper"))
