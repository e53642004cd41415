"""The losses wired to the real networks, on the tiny SD1.5 backbone: each generator loss's gradient on the student's
sample is the direction computed here from direct UNet calls; the critic terms draw what DMD2 and VSD draw; and in
an engine run with ``generator_every = 5`` the student moves one step in five while the critics move every step.

The student's sample is a leaf tensor x, so ∂L/∂x is the surrogate's direction divided by the reduction. Random
draws are replayed from the same seed in the order a loss makes them (timesteps, then noise).
What each test catches (planted once): CFG taken from the wrong place or with cond/uncond swapped, a weighting
mapped to the wrong w(t), the NFSD switch ignored, a fake score evaluated with guidance, DMD's x0 not per sample,
the GAN's real and fake sharing t and ε, prompt dropout not applied, an engine that trains critics in the
generator phase.
"""

from __future__ import annotations

import pytest
import torch

from distillkit import BuildEnv, Phase, StepContext, Student, Teacher
from distillkit.roles.fake_score import FakeScore, FakeScoreConfig
from distillkit.roles.gan_head import GANHead, GANHeadConfig
from distillkit_sds.dmd2 import DMD2, DMD2GAN
from distillkit_sds.sds import NFSD, SDS
from distillkit_sds.vsd import VSD

PROMPTS = ["a red circle", "a blue square"]
RES = 32
SEED = 3
#: float32 networks called in other batch shapes than the loss calls them: agreement to ~1e-4 relative, while a
#: wrong branch, scale or weighting is off by order one
TOL = dict(rtol=1e-3, atol=1e-5)


class World:
    """A tiny SD1.5 teacher (CFG 3), a one-step student, the batch's conditioning and a leaf sample x."""

    def __init__(self, backbone, scale: float = 3.0):
        self.backbone = backbone
        self.teacher = Teacher(backbone, backbone.teacher_unet, scale)
        self.student = Student.build(backbone, [999])
        self.cond = backbone.encode_prompts(PROMPTS, RES)
        self.uncond = backbone.empty_conditioning(2, RES)
        shape = backbone.sample_shape(2, RES)
        self.x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def env(self, role: str) -> BuildEnv:
        return BuildEnv(backbone=self.backbone, teacher=self.teacher, student=self.student, resolution=RES,
                        device=torch.device("cpu"), role=role, seed=0)

    def ctx(self, phase=Phase.GENERATOR, critics=None, real_x0=None) -> StepContext:
        x = self.x if phase is Phase.GENERATOR else self.x.detach()
        return StepContext(phase=phase, step=0, backbone=self.backbone, teacher=self.teacher, student=self.student,
                           prompts=PROMPTS, cond=self.cond, uncond=self.uncond, resolution=RES, student_x0=x,
                           student_t=torch.full((2,), 999), student_input=x.detach(), critics=critics,
                           real_x0=real_x0, generator=torch.Generator().manual_seed(SEED))

    def draws(self, t_min: int, t_max: int):
        """(t, ε, x_t, α, σ) as a loss drawing from the same seed makes them; α, σ in float64, (B, 1, 1, 1)."""
        gen = torch.Generator().manual_seed(SEED)
        t = self.backbone.schedule.sample_timesteps(2, t_min, t_max, generator=gen)
        noise = torch.randn(self.x.shape, generator=gen)
        ac = self.backbone.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
        x_t = alpha.float() * self.x.detach() + sigma.float() * noise
        return t, noise, x_t, alpha, sigma

    @torch.no_grad()
    def eps(self, unet, x_t, t, cond) -> torch.Tensor:
        return self.backbone.denoise(unet, x_t, t, cond).eps.double()

    def grad(self, loss) -> torch.Tensor:
        (g,) = torch.autograd.grad(loss, self.x)
        return g.double()


@pytest.fixture
def world(tiny_sd15):
    return World(tiny_sd15)


def test_sds_gradient_is_w_times_guided_teacher_minus_noise(world):
    unet = world.teacher.unet
    for weighting, w_of in (("sds", lambda a, s: s**2), ("fantasia3d", lambda a, s: a * s**2)):
        out = SDS(SDS.Config(guidance_scale=5.0, weighting=weighting)).generator_loss(world.ctx())
        t, noise, x_t, alpha, sigma = world.draws(20, 980)
        eps_c, eps_u = world.eps(unet, x_t, t, world.cond), world.eps(unet, x_t, t, world.uncond)
        g = w_of(alpha, sigma) * (eps_u + 5.0 * (eps_c - eps_u) - noise.double())  # the params' scale, not the teacher's 3
        torch.testing.assert_close(world.grad(out.total), g / 2, **TOL)


def test_nfsd_gradient_switches_branches_at_t_200(world):
    neg = "ugly, blurry"
    out = NFSD(NFSD.Config(t_min=180, t_max=220, negative_prompt=neg, weighting="uniform")).generator_loss(world.ctx())
    t, _, x_t, _, _ = world.draws(180, 220)
    assert (t < 200).any() and (t >= 200).any(), "the seed must put one sample on each side of t = 200"
    unet = world.teacher.unet
    eps_c, eps_u = world.eps(unet, x_t, t, world.cond), world.eps(unet, x_t, t, world.uncond)
    eps_n = world.eps(unet, x_t, t, world.backbone.encode_prompts([neg, neg], RES))
    low = (t < 200).reshape(-1, 1, 1, 1)
    g = torch.where(low, eps_u, eps_u - eps_n) + 7.5 * (eps_c - eps_u)
    torch.testing.assert_close(world.grad(out.total), g / 2, **TOL)


def test_vsd_with_a_fresh_adapter_fake_score_is_pure_guidance(world):
    """A new LoRA (B = 0) is the teacher itself, so ε̂_teacher^s − ε̂_fake^1 = (s − 1)(ε_c − ε_u): g = σ²(s − 1)(ε_c − ε_u)."""
    fake = FakeScore(FakeScoreConfig(lora={"rank": 2}), world.env("fake_score"))
    out = VSD(VSD.Config()).generator_loss(world.ctx(critics={"fake_score": fake}))
    t, _, x_t, _, sigma = world.draws(20, 980)
    unet = world.teacher.unet
    eps_c, eps_u = world.eps(unet, x_t, t, world.cond), world.eps(unet, x_t, t, world.uncond)
    g = sigma**2 * (3.0 - 1.0) * (eps_c - eps_u)  # the teacher's default scale 3
    torch.testing.assert_close(world.grad(out.total), g / 2, **TOL)


def test_dmd2_with_a_fresh_copy_fake_score_is_the_normalised_guidance_gap_in_x0(world):
    fake = FakeScore(FakeScoreConfig(), world.env("fake_score"))  # a full copy: equal to the teacher at start
    out = DMD2(DMD2.Config()).generator_loss(world.ctx(critics={"fake_score": fake}))
    t, _, x_t, alpha, sigma = world.draws(20, 980)
    unet = world.teacher.unet
    x0_c = (x_t.double() - sigma * world.eps(unet, x_t, t, world.cond)) / alpha
    x0_u = (x_t.double() - sigma * world.eps(unet, x_t, t, world.uncond)) / alpha
    x0_teacher = x0_u + 3.0 * (x0_c - x0_u)
    norm = (world.x.detach().double() - x0_teacher).abs().flatten(1).mean(dim=1).reshape(-1, 1, 1, 1)
    g = (x0_c - x0_teacher) / norm  # per sample
    torch.testing.assert_close(world.grad(out.total), g / world.x.numel(), rtol=1e-3, atol=1e-6)


def recorded_calls(fake: FakeScore, method: str) -> list:
    calls = []
    original = getattr(fake, method)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(fake, method, spy)
    return calls


def test_dmd2_gan_noises_real_and_fake_independently_and_reads_the_bottleneck(world):
    fake = FakeScore(FakeScoreConfig(lora={"rank": 2}), world.env("fake_score"))
    head = GANHead(GANHeadConfig(num_convs=1), world.env("gan_head"))
    real = torch.randn(world.x.shape, generator=torch.Generator().manual_seed(5))
    calls = recorded_calls(fake, "features")
    out = DMD2GAN(DMD2GAN.Config()).critic_loss(world.ctx(Phase.CRITIC, {"fake_score": fake, "gan_head": head}, real))
    assert torch.isfinite(out.total) and len(calls) == 2
    (x_real, t_real, _), (x_fake, t_fake, _) = (c[0] for c in calls)
    assert not torch.equal(t_real, t_fake), "real and fake must get their own timesteps (DMD2)"
    a_r, s_r = world.backbone.schedule.coefficients(t_real, real)
    a_f, s_f = world.backbone.schedule.coefficients(t_fake, real)
    noise_real, noise_fake = (x_real - a_r * real) / s_r, (x_fake - a_f * world.x.detach()) / s_f
    assert not torch.allclose(noise_real, noise_fake, atol=1e-3), "real and fake must get their own noise (DMD2)"


@pytest.mark.parametrize("dropout,branch", [(0.0, "cond"), (1.0, "uncond")])
def test_vsd_fake_score_trains_with_prompt_dropout(world, dropout, branch):
    fake = FakeScore(FakeScoreConfig(lora={"rank": 2}), world.env("fake_score"))
    calls = recorded_calls(fake, "predict")
    VSD(VSD.Config(cond_dropout=dropout)).critic_loss(world.ctx(Phase.CRITIC, {"fake_score": fake}))
    (args, kwargs), = calls
    used = args[2].embeds
    assert torch.equal(used, getattr(world, branch).expand(2).embeds)
    scale = args[4] if len(args) > 4 else kwargs.get("scale", 1.0)
    assert scale == 1.0 and args[0].grad_fn is None  # CFG 1 on a detached sample


# -- the engine: one student update in five, critics every step, in their own phase ----------------------------
def test_dmd2_with_generator_every_5_moves_the_student_one_step_in_five(tiny_sd15_path, tmp_path):
    from distillkit import Engine
    from distillkit.testing.shapes import write_shapes_dataset

    recipe = {
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "sample_every": 0, "checkpoint_every": 100,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [999], "input": "noise", "optim": {"lr": 1e-3}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"images": str(write_shapes_dataset(tmp_path / "shapes", n=4, size=RES)), "resolution": RES,
                 "batch_size": 2},
        "train": {"device": "cpu", "generator_every": 5, "critic_first": False},
        "critics": [{"name": "core.fake_score", "id": "fake_score", "optim": {"lr": 1e-3}},
                    {"name": "core.gan_head", "id": "gan_head", "optim": {"lr": 1e-3}, "params": {"num_convs": 1}}],
        "losses": [{"name": "sds.dmd2"}, {"name": "sds.dmd2_gan", "weight": 1e-3, "critic_weight": 1e-2}],
        "sample": {"prompts": ["a"], "steps": [1]},
    }
    engine = Engine.from_recipe(recipe).setup()
    roles = {"student": engine.student.state_dict, "fake_score": engine.critics["fake_score"].trainable_state_dict,
             "gan_head": engine.critics["gan_head"].trainable_state_dict}
    teacher0 = {k: v.clone() for k, v in engine.teacher.unet.module.state_dict().items()}
    stray: list[str] = []  # a role's optimiser stepping while another role holds gradients

    for name, trained in engine.trained.items():
        def spy(*args, _name=name, _step=trained.optimizer.step, **kwargs):
            others = [n for n, t in engine.trained.items() if n != _name and any(p.grad is not None for p in t.parameters)]
            if _name == "student" and others or _name != "student" and "student" in others:
                stray.append(f"{_name} stepped while {others} held gradients")
            return _step(*args, **kwargs)
        trained.optimizer.step = spy

    moves = []
    for _ in range(6):
        before = {n: {k: v.clone() for k, v in f().items()} for n, f in roles.items()}
        engine.step()
        moves.append({n: any(not torch.equal(v, f()[k]) for k, v in before[n].items()) for n, f in roles.items()})
    assert [m["student"] for m in moves] == [True, False, False, False, False, True]
    assert all(m["fake_score"] and m["gan_head"] for m in moves)
    assert not stray, stray
    assert all(torch.equal(v, engine.teacher.unet.module.state_dict()[k]) for k, v in teacher0.items())
    budget = engine.budget()
    assert budget["student_updates"] == 2 and budget["critic_updates/fake_score"] == 6


def test_backward_simulation_starts_from_the_noise_itself_and_renoises_freshly(world):
    """DMD2's 4-step student (dmd2_sdxl.toml: input "noise", first_input "noise", renoise "fresh"): at t = 999 the
    input is ε itself, not σ_999·ε (ᾱ_999 ≠ 0); each later input is α_t x̂0 + σ_t ε' with new noise ε'."""
    student = Student.build(world.backbone, [999, 749, 499, 249], first_input="noise", renoise="fresh")
    seen = []
    predict = student.predict

    def spy(x_t, t, cond, unet=None):
        seen.append((x_t.detach().clone(), int(torch.as_tensor(t).reshape(-1)[0])))
        return predict(x_t, t, cond, unet=unet)

    student.predict = spy
    noise = torch.randn(world.x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        student.run_steps(noise, world.cond, [999, 749, 499], torch.Generator().manual_seed(5))
    assert [t for _, t in seen] == [999, 749, 499]
    assert torch.equal(seen[0][0], noise)
    with torch.no_grad():
        x0_first = predict(seen[0][0], 999, world.cond).x0
    alpha, sigma = world.backbone.schedule.coefficients(torch.tensor([749]), noise)
    eps_used = (seen[1][0] - alpha * x0_first) / sigma
    assert not torch.allclose(eps_used, noise, atol=1e-3), "re-noising must draw fresh noise"
