"""How much does the engine cost on top of the training computation itself?

``Engine.step()`` wraps the real work (student forward, teacher call, losses, backward, Adam) in
bookkeeping: seeded per-purpose generators, ``StepContext`` objects, phase-wise ``requires_grad``
toggling, metrics dicts, non-finite checks, gradient norms, LR schedulers and accelerate's wrappers.
This script times ``engine.step()`` against a hand-written PyTorch step that does *the same work on the
same modules* (the engine's own backbone, student UNet, teacher and critics, reached through its public
attributes ``engine.student``, ``engine.teacher``, ``engine.critics``, ``engine.trained``,
``engine.losses``; one ``torch.Generator``), so the ratio of the two is the engine's overhead. Target
(issue tracker): ratio <= 1.05 on CPU.

Cases, all on the tiny random-weight SD1.5-shaped fixture:

* ``regression``: ``core.regression``, data-free (``student.input = "noise"``), CFG teacher;
* ``add``: ``add.adversarial`` + ``add.distill`` with a tiny feature network, the backbone's text
  embedding and the feature network's CLS as discriminator conditioning, on 64x64 shape images;
* ``sid``: ``sid.sid`` with a full-copy ``core.fake_score``: one-step student from σ·z at t = 625, CFG
  1.5 in the teacher and the fake score, the generator loss through both networks' inputs;
* ``dmd2``: ``sds.dmd2`` + ``sds.dmd2_gan`` (when the ``sds`` plugin registers them): distribution
  matching against a full-copy fake score and a GAN head on its bottleneck, on shape images.

The two steps are interleaved (engine, hand, engine, hand, ...) after a warm-up, so slow drifts of a
shared machine hit both equally; the medians and their ratio are printed as one table. Before timing,
one step of each is run under a FLOP counter and module call counters to check that the two really
do the same work; the benchmark refuses to report a ratio when they do not.

    HF_HUB_OFFLINE=1 python benchmarks/engine_overhead.py                 # every case
    HF_HUB_OFFLINE=1 python benchmarks/engine_overhead.py --case add --steps 60 --profile 20
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Set before anything imports transformers/diffusers: a hub lookup must fail at once, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from distillkit.models.adapters import UNetRef  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
#: case -> the losses it needs (a case whose plugin is not installed is skipped, and says so)
CASE_LOSSES = {"regression": ["core.regression"], "add": ["add.adversarial", "add.distill"], "sid": ["sid.sid"],
               "dmd2": ["sds.dmd2", "sds.dmd2_gan"]}
CASES = tuple(CASE_LOSSES)


# -- recipes -------------------------------------------------------------------------------------------
def _run_section(name: str, out: Path) -> dict:
    """No samples, no checkpoints, no progress bar: only ``step()`` is measured, never ``fit()``'s I/O."""
    return {"name": name, "output_dir": str(out), "seed": 0, "sample_every": 0, "checkpoint_every": 10**9,
            "progress": False, "resume": "never"}


def regression_recipe(model: Path, out: Path, batch_size: int, resolution: int) -> dict:
    """Data-free regression with a *one*-timestep student: with several timesteps the ``noise`` input
    draws how many no-grad steps precede the trained one, and the engine and the hand-written step
    would then draw different amounts of work from their different random streams."""
    return {
        "run": _run_section("bench_regression", out),
        "model": {"family": "sd15", "pretrained": str(model), "dtype": "float32"},
        "student": {"timesteps": [999], "input": "noise", "optim": {"lr": 1e-4}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": PROMPTS, "resolution": resolution, "batch_size": batch_size},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "losses": [{"name": "core.regression"}],
    }


def add_recipe(model: Path, images: Path, out: Path, batch_size: int, resolution: int) -> dict:
    """``recipes/tiny_cpu.toml``'s ADD set-up (the configuration ``tests/cli/test_add_recipes_e2e.py``
    runs on CPU) without EMA, whose update the hand-written step would otherwise have to repeat.
    ``crop_prob = 0`` keeps the discriminator's input size fixed, so both steps do equal work."""
    return {
        "run": _run_section("bench_add", out),
        "model": {"family": "sd15", "pretrained": str(model), "dtype": "float32"},
        "student": {"timesteps": [999, 749, 499, 249], "input": "real", "zero_terminal_snr": True,
                    "optim": {"lr": 1e-4, "betas": [0.0, 0.99]}},
        "teacher": {"guidance_scale": 3.0},
        "data": {"images": str(images), "resolution": resolution, "batch_size": batch_size},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "critics": [{"name": "add.discriminator", "optim": {"lr": 2e-4, "betas": [0.0, 0.99]},
                     "params": {"feature_network": "tiny", "allow_random_init": True, "text_encoder": "backbone",
                                "image_encoder": "same", "crop_prob": 0.0}}],
        "losses": [{"name": "add.adversarial", "weight": 1.0},
                   {"name": "add.distill", "weight": 2.5, "params": {"weighting": "exp", "space": "pixel"}}],
    }


def sid_recipe(model: Path, out: Path, batch_size: int, resolution: int) -> dict:
    """SiD-LSG's one-step SD1.5 set-up where it decides the work: the student starts from σ_625·z at
    t_init = 625, one CFG scale (1.5) for all four of SiD-LSG's scales, so every teacher and fake-score
    call is a batched cond/uncond pair and the fake score trains with 10 % prompt dropout; the fake score
    a full copy of the teacher (``core.fake_score`` without ``lora``)."""
    return {
        "run": _run_section("bench_sid", out),
        "model": {"family": "sd15", "pretrained": str(model), "dtype": "float32"},
        "student": {"timesteps": [625], "input": "noise", "first_input": "sigma_noise",
                    "optim": {"lr": 1e-5, "betas": [0.0, 0.999]}},
        "teacher": {"guidance_scale": 1.5},
        "data": {"prompts": PROMPTS, "resolution": resolution, "batch_size": batch_size},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "critics": [{"name": "core.fake_score", "id": "fake_score", "optim": {"lr": 1e-5, "betas": [0.0, 0.999]}}],
        "losses": [{"name": "sid.sid"}],
    }


def dmd2_recipe(model: Path, images: Path, out: Path, batch_size: int, resolution: int) -> dict:
    """DMD2's SD1.5 set-up where it decides the work: a one-step student from pure noise at t = 999, the
    teacher at CFG 1.75, a full-copy fake score trained by ε-MSE, a GAN head (two stride-2 convolutions)
    on the fake score's bottleneck with real shape images; GAN weights 1e-3 (generator) and 1e-2 (critic).
    The generator trains every step (``generator_every = 1``; DMD2 updates it every 10th step, which would
    make the timed steps unequal): one step here is a critic update and a generator update."""
    optim = {"lr": 1e-5, "betas": [0.9, 0.999]}
    return {
        "run": _run_section("bench_dmd2", out),
        "model": {"family": "sd15", "pretrained": str(model), "dtype": "float32"},
        "student": {"timesteps": [999], "input": "noise", "optim": optim},
        "teacher": {"guidance_scale": 1.75},
        "data": {"images": str(images), "resolution": resolution, "batch_size": batch_size},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "critics": [{"name": "core.fake_score", "id": "fake_score", "optim": optim},
                    {"name": "core.gan_head", "id": "gan_head", "optim": optim, "params": {"num_convs": 2}}],
        "losses": [{"name": "sds.dmd2"},
                   {"name": "sds.dmd2_gan", "weight": 1e-3, "critic_weight": 1e-2}],
    }


# -- the hand-written steps ----------------------------------------------------------------------------
def _adam(params, cfg):
    """A plain Adam with the recipe's settings (the recipes above have no weight decay and no warm-up)."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def _clip_step_clear(opt, params, clip: float) -> None:
    """Clip (the recipes keep the default grad_clip = 1.0, which the engine applies), update, and drop the
    gradients as the engine does: the parameters are shared with it, so gradients left behind here
    would be accumulated into by its next backward instead of being freshly allocated."""
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


class HandRegression:
    """``core.regression`` written out: encode the prompts, one student call from pure noise at t=999,
    one CFG teacher call at the same input, MSE, backward, clip, Adam."""

    def __init__(self, engine, seed: int = 0):
        r = engine.recipe
        self.backbone, self.teacher, self.data = engine.backbone, engine.teacher, engine.data
        self.unet = engine.student.unet  # the student's handle on its UNet (its adapter active, for a LoRA student)
        student = engine.trained["student"]
        self.params = student.parameters
        self.opt = _adam(self.params, r.student.optim)
        self.clip = student.grad_clip
        self.resolution = r.data.resolution
        (self.t_student,) = engine.student.timesteps
        self.generator = torch.Generator().manual_seed(seed)
        self.k = 0

    def step(self) -> float:
        bb, res = self.backbone, self.resolution
        prompts = self.data.batch(self.k)["prompts"]
        self.k += 1
        with torch.no_grad():
            cond = bb.encode_prompts(prompts, res)
            uncond = bb.empty_conditioning(len(prompts), res)
        x_in = torch.randn(bb.sample_shape(len(prompts), res), generator=self.generator)
        t = torch.full((len(prompts),), self.t_student, dtype=torch.long)
        x0 = bb.denoise(self.unet, x_in, t, cond).x0
        target = self.teacher.target(x_in, t, cond, uncond).x0
        loss = (x0 - target).pow(2).mean()
        loss.backward()
        _clip_step_clear(self.opt, self.params, self.clip)
        return float(loss)


class HandADD:
    """ADD written out with the plugin's functional code and the engine's discriminator.

    The engine shares one student sample between its two phases. The discriminator's conditioning
    depends on the batch alone and is computed once per step (``ctx.cached(..., across_phases=True)``);
    the decoded student pixels once per phase (detached for the critic, with the graph for the
    generator): this step does the same. The heads are frozen for the generator
    phase, the one ``requires_grad`` change correctness needs (otherwise their weight gradients would be
    computed and leak into the next critic update).
    """

    def __init__(self, engine, seed: int = 0):
        from distillkit_add import functional as Fn

        self.Fn = Fn
        r = engine.recipe
        self.backbone, self.teacher, self.data = engine.backbone, engine.teacher, engine.data
        self.unet = engine.student.unet
        self.timesteps = torch.tensor(engine.student.timesteps, dtype=torch.long)
        self.zero_terminal_snr = engine.student.zero_terminal_snr
        ((cid, self.critic),) = engine.critics.items()
        heads, student = engine.trained[cid], engine.trained["student"]
        self.heads = heads.parameters
        self.critic_clip = heads.grad_clip
        self.critic_opt = _adam(self.heads, r.critics[0].optim)
        self.params = student.parameters
        self.opt = _adam(self.params, r.student.optim)
        self.clip = student.grad_clip
        adv, dist = engine.losses
        self.adv_weight, self.dist_weight = float(adv.entry.weight_at(0)), float(dist.entry.weight_at(0))
        self.critic_weight = float(adv.entry.critic_weight_at(0))
        self.dcfg = dist.loss.config
        self.resolution = r.data.resolution
        self.generator = torch.Generator().manual_seed(seed)
        self.k = 0

    def step(self) -> tuple[float, float]:
        Fn, bb, disc, g = self.Fn, self.backbone, self.critic, self.generator
        sched, dcfg, reduction = bb.schedule, self.dcfg, self.critic.config.reduction
        raw = self.data.batch(self.k)
        self.k += 1
        prompts, real = raw["prompts"], raw["pixels"]
        n = len(prompts)
        with torch.no_grad():
            cond = bb.encode_prompts(prompts, self.resolution)
            uncond = bb.empty_conditioning(n, self.resolution)
            real_x0 = bb.encode_images(real)

        # student sample x̂_θ from noised real latents (ADD §3.1), kept with its graph for the generator
        noise = torch.randn(real_x0.shape, generator=g)
        t = self.timesteps[torch.randint(0, len(self.timesteps), (n,), generator=g)]
        x_s = sched.add_noise(real_x0, noise, t)
        if self.zero_terminal_snr:
            x_s = torch.where((t == self.timesteps.max()).reshape(-1, 1, 1, 1), noise, x_s)
        x0 = bb.denoise(self.unet, x_s, t, cond).x0

        # critic phase: hinge on real / detached fake features, γ·R1 on the real heads' inputs
        with torch.no_grad():
            c = disc.condition(prompts, cond, real)
            fake = bb.decode(x0.detach())
            real_f = disc.features(real, g)
            fake_f = disc.features(fake, g)
        real_f = [f.detach().requires_grad_(True) for f in real_f]
        real_logits, fake_logits = disc(real_f, c), disc(fake_f, c)
        d_real, d_fake = Fn.hinge_d_loss(real_logits, fake_logits, reduction)
        d_loss = d_real + d_fake + disc.config.r1_gamma * Fn.r1_penalty(real_logits, real_f)
        (self.critic_weight * d_loss).backward()
        _clip_step_clear(self.critic_opt, self.heads, self.critic_clip)

        # generator phase: −Σ D_k on the decoded student sample + λ·distillation to the re-noised teacher
        for p in self.heads:
            p.requires_grad_(False)
        pixels = bb.decode(x0)
        g_adv = Fn.hinge_g_loss(disc(disc.features(pixels, g), c), reduction)
        t2 = sched.sample_timesteps(n, dcfg.t_min, dcfg.t_max, generator=g)
        x_t = sched.add_noise(x0.detach(), torch.randn(x0.shape, generator=g), t2)
        alpha, sigma = sched.coefficients(t2, x0)
        target = self.teacher.target(x_t, t2, cond, uncond, scale=dcfg.guidance_scale).x0
        with torch.no_grad():
            target = bb.decode(target)
        weight = Fn.distill_weight(dcfg.weighting, alpha, sigma, dcfg.sds_weight).reshape(-1)
        distill = Fn.distill_distance(pixels, target, weight, dcfg.reduction)
        g_loss = self.adv_weight * g_adv + self.dist_weight * distill
        g_loss.backward()
        _clip_step_clear(self.opt, self.params, self.clip)
        for p in self.heads:
            p.requires_grad_(True)
        return float(d_loss), float(g_loss)


class HandSiD:
    """``sid.sid`` written out with the plugin's functional code and the engine's teacher and fake score.

    One student call from σ_625·z (shared by both phases, as the engine's default sample policy does).
    Critic phase: the fake score's denoising loss at κ1 on the detached sample, with prompt dropout.
    Generator phase, the fake score frozen: x_t = α_t x_g + σ_t ε with the student's graph, the teacher
    (κ4) and the fake score (κ2) with gradients *through their inputs*, SiD's loss with its weight w.
    """

    def __init__(self, engine, seed: int = 0):
        from distillkit_sid import functional as Fn
        from distillkit_sid import guidance

        self.Fn = Fn
        r = engine.recipe
        self.backbone, self.teacher, self.data = engine.backbone, engine.teacher, engine.data
        self.unet = engine.student.unet
        (self.t_init,) = engine.student.timesteps
        ((cid, self.fake),) = engine.critics.items()
        fake, student = engine.trained[cid], engine.trained["student"]
        self.fake_params, self.fake_clip = fake.parameters, fake.grad_clip
        self.fake_opt = _adam(self.fake_params, r.critics[0].optim)
        self.params, self.clip = student.parameters, student.grad_clip
        self.opt = _adam(self.params, r.student.optim)
        (bl,) = engine.losses
        c = self.cfg = bl.loss.config
        self.scales = guidance.resolve(c.guidance, engine.teacher.guidance_scale, c.fake_train_scale, c.fake_scale,
                                       c.teacher_scale, c.prompt_dropout)
        self.resolution = r.data.resolution
        self.generator = torch.Generator().manual_seed(seed)
        self.k = 0

    def step(self) -> tuple[float, float]:
        Fn, bb, g, c, s = self.Fn, self.backbone, self.generator, self.cfg, self.scales
        sched = bb.schedule
        prompts = self.data.batch(self.k)["prompts"]
        self.k += 1
        n = len(prompts)
        with torch.no_grad():
            cond = bb.encode_prompts(prompts, self.resolution)
            uncond = bb.empty_conditioning(n, self.resolution)

        # the student's one step from σ_τ1·z at τ1 = t_init, with its graph
        z = torch.randn(bb.sample_shape(n, self.resolution), generator=g)
        t_s = torch.full((n,), self.t_init, dtype=torch.long)
        x_g = bb.denoise(self.unet, sched.coefficients(t_s[:1], z)[1] * z, t_s, cond).x0

        # critic phase: the fake score's DSM on the detached sample, prompt dropout, CFG scale κ1
        x0 = x_g.detach().float()
        t = sched.sample_timesteps(n, c.t_min, c.t_max, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        fcond = cond.where(torch.rand(n, generator=g) < s.dropout, uncond) if s.dropout > 0 else cond
        eps_pred = self.fake.predict(sched.add_noise(x0, eps, t), t, fcond, uncond, scale=s.fake_train).eps
        d_loss = Fn.fake_score_loss(eps_pred, eps, c.fake_loss_scale)
        d_loss.backward()
        _clip_step_clear(self.fake_opt, self.fake_params, self.fake_clip)

        # generator phase: through both frozen networks' inputs
        for p in self.fake_params:
            p.requires_grad_(False)
        x_g = x_g.float()
        t = sched.sample_timesteps(n, c.t_min, c.t_max, generator=g)
        x_t = sched.add_noise(x_g, torch.randn(x_g.shape, generator=g), t)
        y_real = self.teacher.predict(x_t, t, cond, uncond, scale=s.teacher).x0
        y_fake = self.fake.predict(x_t, t, cond, uncond, scale=s.fake).x0
        w = Fn.weight_factor(x_g, y_real, c.weight_floor)
        g_loss = Fn.sid_generator_loss(x_g, y_real, y_fake, c.alpha, c.lsg, weight=w)
        g_loss.backward()
        _clip_step_clear(self.opt, self.params, self.clip)
        for p in self.fake_params:
            p.requires_grad_(True)
        return float(d_loss), float(g_loss)


class HandDMD2:
    """``sds.dmd2`` + ``sds.dmd2_gan`` written out with the plugin's functional code and the engine's teacher,
    fake score and GAN head.

    One student call from noise at t = 999, shared by both phases. Critic phase, one backward for both
    critics (each then steps its own optimiser): the fake score's ε-MSE on the detached sample, plus the
    critic weight × the head's logistic loss on real and student latents, each noised with its own t and
    ε and read through the fake score's encoder. Generator phase, both critics frozen: DMD2's direction
    from the teacher's and the fake score's x̂0 (no gradient through either) in the surrogate, plus the
    GAN weight × softplus(−D) of the noised sample through the frozen encoder and head.
    """

    def __init__(self, engine, seed: int = 0):
        from distillkit_sds import functional as Fn

        self.Fn = Fn
        r = engine.recipe
        self.backbone, self.teacher, self.data = engine.backbone, engine.teacher, engine.data
        self.unet = engine.student.unet
        (self.t_student,) = engine.student.timesteps
        self.fake, self.head = engine.critics["fake_score"], engine.critics["gan_head"]
        self.critics = [(t.parameters, _adam(t.parameters, r.critics[i].optim), t.grad_clip)
                        for i, t in enumerate((engine.trained["fake_score"], engine.trained["gan_head"]))]
        student = engine.trained["student"]
        self.params, self.clip = student.parameters, student.grad_clip
        self.opt = _adam(self.params, r.student.optim)
        dm, gan = engine.losses
        self.dm, self.gan = dm.loss.config, gan.loss.config
        self.gan_weight, self.gan_critic_weight = float(gan.entry.weight_at(0)), float(gan.entry.critic_weight_at(0))
        self.dm_weight, self.dm_critic_weight = float(dm.entry.weight_at(0)), float(dm.entry.critic_weight_at(0))
        self.resolution = r.data.resolution
        self.generator = torch.Generator().manual_seed(seed)
        self.k = 0

    def _logits(self, x: torch.Tensor, cond) -> torch.Tensor:
        sched, g = self.backbone.schedule, self.generator
        t = sched.sample_timesteps(x.shape[0], self.gan.t_min, self.gan.t_max, generator=g)
        x_t = sched.add_noise(x, torch.randn(x.shape, generator=g), t)
        return self.head(self.fake.features(x_t, t, cond).mid)

    def step(self) -> tuple[float, float]:
        Fn, bb, g, dm = self.Fn, self.backbone, self.generator, self.dm
        sched = bb.schedule
        raw = self.data.batch(self.k)
        self.k += 1
        prompts, n = raw["prompts"], len(raw["prompts"])
        with torch.no_grad():
            cond = bb.encode_prompts(prompts, self.resolution)
            uncond = bb.empty_conditioning(n, self.resolution)
            real_x0 = bb.encode_images(raw["pixels"])

        z = torch.randn(bb.sample_shape(n, self.resolution), generator=g)
        x = bb.denoise(self.unet, z, torch.full((n,), self.t_student, dtype=torch.long), cond).x0

        # critic phase: fake score and head in one backward, each its own optimiser step
        x0 = x.detach().float()
        t = sched.sample_timesteps(n, dm.fake_t_min, dm.fake_t_max, generator=g)
        dsm = self.fake.denoising_loss(x0, t, torch.randn(x0.shape, generator=g), cond, reduction="mean")
        d_real, d_fake = Fn.dmd2_discriminator_gan(self._logits(real_x0.float(), cond), self._logits(x0, cond))
        d_loss = self.dm_critic_weight * dsm + self.gan_critic_weight * (d_real + d_fake)
        d_loss.backward()
        for params, opt, clip in self.critics:
            _clip_step_clear(opt, params, clip)

        # generator phase: both critics frozen
        frozen = [p for params, _, _ in self.critics for p in params]
        for p in frozen:
            p.requires_grad_(False)
        t = sched.sample_timesteps(n, dm.t_min, dm.t_max, generator=g)
        x_t = sched.add_noise(x.detach().float(), torch.randn(x.shape, generator=g), t)
        with torch.no_grad():
            eps_teacher = self.teacher.predict(x_t, t, cond, uncond, scale=dm.guidance_scale).eps
            eps_fake = self.fake.predict(x_t, t, cond, uncond, scale=dm.fake_guidance_scale).eps
            alpha, sigma = sched.alpha(t), sched.sigma(t)  # float64, as the loss
            direction = Fn.dmd_direction(x, Fn.x0_from_eps_float64(x_t, eps_teacher, alpha, sigma),
                                         Fn.x0_from_eps_float64(x_t, eps_fake, alpha, sigma))
            direction = Fn.clean_direction(direction.float(), dm.grad_clamp, dm.nan_to_num)
        dm_loss = Fn.surrogate_loss(x, direction, dm.reduction)
        g_gan = Fn.dmd2_generator_gan(self._logits(x.float(), cond))
        g_loss = self.dm_weight * dm_loss + self.gan_weight * g_gan
        g_loss.backward()
        _clip_step_clear(self.opt, self.params, self.clip)
        for p in frozen:
            p.requires_grad_(True)
        return float(d_loss), float(g_loss)


# -- checking that both do the same work ----------------------------------------------------------------
def _modules(engine) -> dict[str, torch.nn.Module]:
    """The networks whose forward calls are counted, by name (a shared base is one module: its calls are
    the teacher's and every adapter role's together)."""
    bb = engine.backbone
    mods = {"student unet": engine.student.unet.module, "teacher unet": engine.teacher.unet.module,
            "text encoder": bb.text_encoder, "vae encoder": bb.vae.encoder, "vae decoder": bb.vae.decoder}
    for cid, critic in engine.critics.items():
        if hasattr(critic, "heads"):  # add.discriminator
            mods["feature net"] = critic.net
            mods["disc heads"] = critic.heads[0]
            if critic.image_encoder is not None:
                mods["image encoder"] = critic.image_encoder
        elif isinstance(getattr(critic, "unet", None), UNetRef):  # core.fake_score: calls of its network
            mods[f"{cid} unet"] = critic.unet.module
        else:  # a head of its own (core.gan_head)
            mods[cid] = critic
    return mods


class _FlopCount:
    """Counts matmul/convolution/attention FLOPs (forward and backward) with torch's own formulas.

    ``torch.utils.flop_counter.FlopCounterMode`` itself cannot be used: its per-module tracker hooks
    break ``autograd.grad`` on leaf tensors, which the R1 penalty of the ADD critic does.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total = 0
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def work_of(engine, step_fn) -> tuple[float, Counter]:
    """FLOPs (forward + backward) and module calls of one step."""
    calls: Counter = Counter()
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: calls.update([name]))
               for name, m in _modules(engine).items()]
    try:
        with _FlopCount() as flops:
            step_fn()
    finally:
        for h in handles:
            h.remove()
    return float(flops.total), calls


def check_same_work(engine, hand) -> str:
    """Raise if the two steps differ in FLOPs or module calls; return a one-line summary.

    One untimed step of each runs first: the first step fills caches that every later one reuses
    (the empty prompt's encoding), and counting it would compare a first step with a second.
    """
    engine.step()
    hand.step()
    f_eng, c_eng = work_of(engine, engine.step)
    f_hand, c_hand = work_of(engine, hand.step)
    if c_eng != c_hand or abs(f_eng - f_hand) > 1e-6 * max(f_eng, 1.0):
        raise SystemExit(f"the hand-written step does different work than engine.step():\n"
                         f"  engine: {f_eng:.4g} FLOPs, calls {dict(c_eng)}\n"
                         f"  hand:   {f_hand:.4g} FLOPs, calls {dict(c_hand)}")
    return f"{f_eng / 1e9:.3f} GFLOP/step, module calls {dict(sorted(c_eng.items()))}"


# -- timing -------------------------------------------------------------------------------------------
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(engine, hand, steps: int, warmup: int, clock=time.perf_counter) -> tuple[list[float], list[float]]:
    """engine, hand, engine, hand, ...: ``warmup`` untimed pairs, then ``steps`` timed pairs."""
    for _ in range(warmup):
        engine.step()
        hand.step()
    t_eng, t_hand, nonfinite = [], [], 0
    for _ in range(steps):
        t0 = clock()
        metrics = engine.step()
        t1 = clock()
        hand.step()
        t2 = clock()
        t_eng.append(t1 - t0)
        t_hand.append(t2 - t1)
        nonfinite += "nonfinite" in metrics
    if nonfinite:  # a skipped update is less work, which would flatter the engine
        print(f"warning: {nonfinite} engine steps had non-finite losses and skipped their update", file=sys.stderr)
    return t_eng, t_hand


def _own_times(fn, steps: int, clock=time.perf_counter) -> dict:
    """cProfile of ``steps`` calls of ``fn`` timed by ``clock``: {function: (calls, own seconds)}."""
    prof = cProfile.Profile(clock)
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    return {key: (v[0], v[2]) for key, v in pstats.Stats(prof).stats.items()}


def profile_difference(engine, hand, steps: int, top: int = 15, clock=time.perf_counter) -> str:
    """Where the engine's extra time goes: per-function own time per step, engine minus hand-written.

    Both run under cProfile. Functions both steps call equally often are the shared computation (the
    model's kernels, Adam's arithmetic): their difference is measurement noise and is summed on one line.
    What the engine calls more often, or alone, is its own work (seeded generators, ``requires_grad``
    toggling, contexts, metrics, accelerate's wrappers) and is listed by its extra own time. cProfile
    inflates the cost of Python calls several-fold, and tensors freed as a function returns are charged
    to its caller, so read the list as a ranking and time a suspect on its own.
    """
    eng, hnd = _own_times(engine.step, steps, clock), _own_times(hand.step, steps, clock)
    extra, shared = [], 0.0
    for key, (calls, own) in eng.items():
        h_calls, h_own = hnd.get(key, (0, 0.0))
        if calls == h_calls:
            shared += own - h_own
        else:
            extra.append((own - h_own, calls, h_calls, key))
    shared -= sum(own for key, (calls, own) in hnd.items() if key not in eng)  # what only the hand step calls
    extra.sort(key=lambda r: r[0], reverse=True)
    total = (sum(v[1] for v in eng.values()) - sum(v[1] for v in hnd.values())) / steps
    lines = [f"own time per step under cProfile (inflated): engine - hand = {total * 1e3:+.2f} ms, of which "
             f"{(total - shared / steps) * 1e3:+.2f} ms in functions the engine calls more often or alone and "
             f"{shared / steps * 1e3:+.2f} ms (noise) in functions both call equally often; largest of the former:",
             f"{'ms/step':>8} {'calls engine':>12} {'calls hand':>10}  function"]
    for delta, c_eng, c_hand, (file, line, name) in extra[:top]:
        where = f"{file.split('site-packages/')[-1].replace(str(ROOT) + '/', '')}:{line}({name})" \
            if file != "~" else name
        lines.append(f"{delta / steps * 1e3:8.3f} {c_eng / steps:12.1f} {c_hand / steps:10.1f}  {where}")
    return "\n".join(lines)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


# -- main ---------------------------------------------------------------------------------------------
def build_case(case: str, tmp: Path, fixtures: dict, args):
    from distillkit import Engine

    out = tmp / f"run_{case}"
    if case == "regression":
        recipe = regression_recipe(fixtures["model"], out, args.batch_size, args.resolution)
        engine = Engine.from_recipe(recipe).setup()
        return engine, HandRegression(engine, seed=args.seed)
    if case == "dmd2":
        recipe = dmd2_recipe(fixtures["model"], fixtures["images"], out, args.batch_size, args.resolution)
        engine = Engine.from_recipe(recipe).setup()
        return engine, HandDMD2(engine, seed=args.seed)
    if case == "sid":
        recipe = sid_recipe(fixtures["model"], out, args.batch_size, args.resolution)
        engine = Engine.from_recipe(recipe).setup()
        return engine, HandSiD(engine, seed=args.seed)
    recipe = add_recipe(fixtures["model"], fixtures["images"], out, args.batch_size, args.resolution)
    engine = Engine.from_recipe(recipe).setup()
    return engine, HandADD(engine, seed=args.seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="timed steps of each (interleaved pairs)")
    p.add_argument("--warmup", type=int, default=5, help="untimed pairs before timing")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64, help="pixels (the latents are 1/8 of it)")
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--seed", type=int, default=0, help="seed of the hand-written step's one generator")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall: elapsed time (the target's measure, on an idle machine); cpu: CPU seconds of this "
                        "process, which other jobs on a shared machine disturb far less (use with --threads 1: "
                        "waiting OpenMP threads spin and are charged CPU time)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, cProfile N more steps of each and print where the engine's extra time goes")
    args = p.parse_args(argv)
    if args.steps < 2 or args.warmup < 0:
        p.error("need --steps >= 2 and --warmup >= 0")
    if args.resolution % 8:
        p.error("--resolution must be a multiple of 8 (the VAE downsamples by 8)")
    if args.threads:
        torch.set_num_threads(args.threads)

    import warnings

    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    from distillkit.testing.shapes import write_shapes_dataset
    from distillkit.testing.tiny import build_tiny_sd15

    from distillkit.registry import Registry

    installed = set(Registry.discover().losses)
    cases, notes = [], []
    for case in (CASES if args.case == "all" else (args.case,)):
        missing = [name for name in CASE_LOSSES[case] if name not in installed]
        if missing:
            notes.append(f"{case}: skipped, {', '.join(missing)} not installed")
        else:
            cases.append(case)
    rows, profiles = [], []
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as d:
        tmp = Path(d)
        fixtures = {"model": build_tiny_sd15(tmp / "tiny_sd15"),
                    "images": write_shapes_dataset(tmp / "shapes", n=max(16, 2 * args.batch_size),
                                                   size=args.resolution)}
        for case in cases:
            engine, hand = build_case(case, tmp, fixtures, args)
            notes.append(f"{case}: {check_same_work(engine, hand)}")
            t_eng, t_hand = interleaved(engine, hand, args.steps, args.warmup, CLOCKS[args.clock])
            m_eng, m_hand = statistics.median(t_eng), statistics.median(t_hand)
            # the ratio of medians, and the median of per-pair ratios (robust to slow drifts of the machine)
            paired = statistics.median(a / b for a, b in zip(t_eng, t_hand))
            rows.append((case, m_eng, _quartiles(t_eng), m_hand, _quartiles(t_hand), m_eng / m_hand, paired))
            if args.profile:
                profiles.append((case, profile_difference(engine, hand, args.profile, clock=CLOCKS[args.clock])))
    elapsed = time.perf_counter() - t_start

    print(f"engine overhead: batch {args.batch_size}, {args.resolution}x{args.resolution}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, interleaved, {args.clock} clock; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; "
          f"1-min load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"{os.cpu_count()} CPUs")
    for n in notes:
        print(f"  same work  {n}")
    head = (f"{'case':<11} {'engine s/step':>14} {'(p25-p75)':>17} {'hand s/step':>12} {'(p25-p75)':>17} "
            f"{'ratio':>6} {'paired':>7}")
    print(head)
    print("-" * len(head))
    for case, m_eng, q_eng, m_hand, q_hand, ratio, paired in rows:
        print(f"{case:<11} {m_eng:>14.4f} {f'({q_eng[0]:.4f}-{q_eng[1]:.4f})':>17} {m_hand:>12.4f} "
              f"{f'({q_hand[0]:.4f}-{q_hand[1]:.4f})':>17} {ratio:>6.3f} {paired:>7.3f}")
    print(f"ratio = median engine / median hand; paired = median of per-pair ratios; target <= 1.05. "
          f"Total {elapsed:.0f} s.")
    for case, text in profiles:
        print(f"\n== cProfile, {case}: engine.step() minus the hand-written step ==\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
