"""End-to-end engine behaviour on the tiny SD1.5/SDXL fixtures (CPU, offline, seconds per test)."""

from __future__ import annotations

import json

import pydantic
import pytest
import torch
from safetensors.torch import load_file

import distillkit
from distillkit import Engine, LossOutput, Registry
from distillkit.errors import DistillkitError, NonFiniteLossError


def recipe(model_path, out, family="sd15", **over):
    r = {
        "run": {"name": "t", "output_dir": str(out), "max_steps": 3, "checkpoint_every": 2, "sample_every": 3,
                "progress": False, "seed": 7},
        "model": {"family": family, "pretrained": str(model_path)},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-3}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square", "a green triangle"], "resolution": 32,
                 "batch_size": 2},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
        "sample": {"prompts": ["a red circle", "a blue square"], "steps": [1, 2]},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            r.setdefault(section, {})[field] = value
        else:
            r[section] = value
    return r


def student_weights(engine):
    return {n: p.clone() for n, p in engine.student.state_dict().items()}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_run_writes_run_dir_and_exports_a_pipeline(family, tiny_sd15_path, tiny_sdxl_path, tmp_path):
    path = tiny_sd15_path if family == "sd15" else tiny_sdxl_path
    engine = Engine.from_recipe(recipe(path, tmp_path / "run", family))
    before = student_weights(engine.setup())
    assert engine.fit() == "completed"
    after = student_weights(engine)
    assert any(not torch.equal(before[n], after[n]) for n in before), "student did not train"
    for n, p in engine.teacher.unet.module.named_parameters():  # the teacher is the untouched original
        assert torch.equal(p, before[n])

    out = tmp_path / "run"
    assert (out / "recipe.toml").is_file() and (out / "run.json").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r and "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss/core.regression/mse"] >= 0 for r in steps)
    assert records[-1]["event"] == "end" and records[-1]["status"] == "completed"
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000003.png"]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003"]
    assert not list((out / "checkpoints").rglob("*.pt")) and not list((out / "checkpoints").rglob("*.bin"))

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(out / "final")
    for n, p in pipe.unet.named_parameters():
        assert torch.equal(p, after[n]), n
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, height=32, width=32,
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3) and (image >= 0).all() and (image <= 1).all()
    meta = json.loads((out / "final" / "distillkit.json").read_text())
    assert meta["timesteps"] == [999, 499] and meta["family"] == family

    # The exported scheduler samples what the student samples: one step from noise at t=999. (The
    # pipeline feeds σ_999·ε rather than ε, a 0.2% input difference, hence the tolerance.)
    from distillkit.inference import load_student, sample_images

    backbone, student, res = load_student(out / "final")
    ours = sample_images(backbone, student, ["a red circle"], 1, seed=5, resolution=32)
    theirs = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, height=32, width=32,
                  generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert pipe.scheduler.timesteps.tolist() == [999]
    assert (ours - theirs).abs().max() < 0.02


def test_resume_after_interruption_matches_uninterrupted_run(tiny_sd15_path, tmp_path):
    full = Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "a", run={
        "output_dir": str(tmp_path / "a"), "max_steps": 4, "checkpoint_every": 2, "sample_every": 0,
        "progress": False, "seed": 3}, student={"timesteps": [999, 499], "input": "noise",
                                                  "optim": {"lr": 1e-3}, "ema": {"decay": 0.9, "rampup": 0.5}}))
    full.fit()

    first = Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "b", run={
        "output_dir": str(tmp_path / "b"), "max_steps": 2, "checkpoint_every": 2, "sample_every": 0,
        "progress": False, "seed": 3}, student={"timesteps": [999, 499], "input": "noise",
                                                  "optim": {"lr": 1e-3}, "ema": {"decay": 0.9, "rampup": 0.5}}))
    first.fit()
    second = Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "b", run={
        "output_dir": str(tmp_path / "b"), "max_steps": 4, "checkpoint_every": 2, "sample_every": 0,
        "progress": False, "seed": 3}, student={"timesteps": [999, 499], "input": "noise",
                                                  "optim": {"lr": 1e-3}, "ema": {"decay": 0.9, "rampup": 0.5}}))
    second.setup()
    assert second.global_step == 2
    second.fit()
    a, b = student_weights(full), student_weights(second)
    assert all(torch.equal(a[n], b[n]) for n in a)
    ea = load_file(str(tmp_path / "a/checkpoints/step-00000004/ema.safetensors"))
    eb = load_file(str(tmp_path / "b/checkpoints/step-00000004/ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_output_dir_of_another_run_is_not_overwritten(tiny_sd15_path, tmp_path):
    Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "r")).fit(max_steps=1)
    other = recipe(tiny_sd15_path, tmp_path / "r", teacher={"guidance_scale": 5.0})
    with pytest.raises(DistillkitError, match="already holds a different run"):
        Engine.from_recipe(other).setup()


def test_lora_student_trains_adapters_only_and_exports_loadable_lora(tiny_sd15_path, tmp_path):
    r = recipe(tiny_sd15_path, tmp_path / "lora", student={"timesteps": [999], "input": "noise",
                                                          "lora": {"rank": 4}, "optim": {"lr": 1e-2}},
               sample={"prompts": ["a"], "steps": [1]})
    engine = Engine.from_recipe(r).setup()
    names = set(engine.student.named_parameters())
    assert names and all(".lora_A.student." in n or ".lora_B.student." in n for n in names)
    unet = engine.student.unet.module
    assert unet is engine.teacher.unet.module, "a LoRA student adapts the teacher's own UNet (no copy)"
    base = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora" not in n}
    lora0 = student_weights(engine)
    engine.fit()
    for n, p in unet.named_parameters():
        if "lora" not in n:
            assert torch.equal(p, base[n])
    assert any(not torch.equal(lora0[n], p) for n, p in engine.student.state_dict().items())
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_path)
    pipe.load_lora_weights(tmp_path / "lora" / "final")
    img = pipe("a", num_inference_steps=1, height=32, width=32, output_type="np").images
    assert torch.isfinite(torch.as_tensor(img)).all()


# -- a fake critic + loss, to check the engine's phase mechanics independently of any method ------------
class LinearCritic(distillkit.Critic):
    name = "linear"

    def __init__(self, config, env):
        super().__init__(config, env)
        self.head = torch.nn.Conv2d(env.backbone.channels, 1, 1)
        self.frozen = torch.nn.Conv2d(env.backbone.channels, env.backbone.channels, 1).requires_grad_(False)

    def forward(self, x):
        return self.head(self.frozen(x)).mean(dim=(1, 2, 3))


class CriticLoss(distillkit.Loss):
    name = "critic_game"
    critic = "fake.linear"

    class Config(pydantic.BaseModel):
        nan_after: int = -1

    def generator_loss(self, ctx):
        val = -ctx.critic(ctx.student_x0).mean()
        if 0 <= self.config.nan_after <= ctx.step:
            val = val * float("nan")
        ctx.memo["seen_grad"] = ctx.student_x0.requires_grad
        return LossOutput(val, {"g": val.detach()})

    def critic_loss(self, ctx):
        assert not ctx.student_x0.requires_grad
        val = ctx.critic(ctx.student_x0).mean().pow(2)
        return LossOutput(val, {"d": val.detach()})


class FakePlugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        register(CriticLoss)

    @distillkit.hookimpl
    def register_critics(self, register):
        register(LinearCritic)


class Recorder:
    def __init__(self):
        self.calls = []

    @distillkit.hookimpl
    def on_step_end(self, step, metrics):
        self.calls.append(("step", step))

    @distillkit.hookimpl
    def on_checkpoint(self, step, path):
        self.calls.append(("checkpoint", step))

    @distillkit.hookimpl
    def on_run_end(self, status):
        self.calls.append(("end", status))


def _fake_engine(path, out, **params):
    reg = Registry.discover(extra_plugins={"fake": FakePlugin()})
    r = recipe(path, out, critics=[{"name": "fake.linear", "updates_per_step": 2, "optim": {"lr": 1e-2}}],
               losses=[{"name": "fake.critic_game", "params": params}, {"name": "core.regression"}])
    return Engine.from_recipe(r, registry=reg)


def test_phases_update_only_their_own_parameters_and_callbacks_fire(tiny_sd15_path, tmp_path):
    engine = _fake_engine(tiny_sd15_path, tmp_path / "fake")
    rec = Recorder()
    engine.add_callback(rec)
    engine.setup()
    critic = engine.critics["linear"]
    head0 = critic.head.weight.detach().clone()
    frozen0 = critic.frozen.weight.detach().clone()
    student0 = student_weights(engine)
    metrics = engine.step()
    assert not torch.equal(critic.head.weight, head0), "critic head did not train"
    assert torch.equal(critic.frozen.weight, frozen0), "a frozen critic part changed"
    assert any(not torch.equal(student0[n], p) for n, p in engine.student.state_dict().items())
    assert critic.head.weight.requires_grad and not critic.frozen.weight.requires_grad
    assert {"critic/fake.critic_game", "generator/fake.critic_game", "critic/fake.critic_game/d",
            "loss/fake.critic_game/g", "grad_norm/linear", "grad_norm/student"} <= set(metrics)
    engine.fit(max_steps=2)
    assert ("step", 2) in rec.calls and ("checkpoint", 2) in rec.calls and rec.calls[-1] == ("end", "completed")


def test_nonfinite_loss_is_skipped_reported_and_aborts_keeping_checkpoint(tiny_sd15_path, tmp_path):
    engine = _fake_engine(tiny_sd15_path, tmp_path / "nan", nan_after=2)
    engine.recipe.run.max_nonfinite_steps = 2
    engine.recipe.run.max_steps = 10
    engine.setup()
    engine.fit(max_steps=2)  # two good steps, checkpointed
    good = student_weights(engine)
    with pytest.raises(NonFiniteLossError, match=r"generator/fake\.critic_game was NaN/Inf for 2 consecutive"):
        engine.fit(max_steps=10)
    after = student_weights(engine)
    assert all(torch.equal(good[n], after[n]) for n in good), "a non-finite step changed the student"
    events = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [e["term"] for e in events if e.get("event") == "nonfinite"] == ["generator/fake.critic_game"] * 2
    assert (tmp_path / "nan" / "checkpoints" / "step-00000002" / "COMPLETE").exists()


def test_pixel_space_family_trains_exports_and_samples(tiny_pixel_path, tmp_path):
    """No VAE: the student works on pixels directly; the export reloads through the same loader."""
    r = recipe(tiny_pixel_path, tmp_path / "px", "pixel", data={
        "prompts": ["a red circle", "a blue square"], "resolution": 16, "batch_size": 2})
    engine = Engine.from_recipe(r)
    assert engine.fit() == "completed"
    from distillkit.inference import load_student, sample_images

    backbone, student, res = load_student(tmp_path / "px" / "final")
    assert backbone.family == "pixel" and res == 16
    trained = engine.student.state_dict()
    for n, p in student.unet.module.named_parameters():
        assert torch.equal(p, trained[n])
    images = sample_images(backbone, student, ["a red circle"], 2, seed=0, resolution=16)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_request_stop_checkpoints_a_whole_step_and_resume_matches(tiny_sd15_path, tmp_path):
    class StopAt:
        def __init__(self, step):
            self.step = step

        @distillkit.hookimpl
        def on_step_end(self, engine, step):
            if step == self.step:
                engine.request_stop()

    ref = Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "ref", run={
        "output_dir": str(tmp_path / "ref"), "max_steps": 4, "checkpoint_every": 100, "sample_every": 0,
        "progress": False}))
    ref.fit()
    r = recipe(tiny_sd15_path, tmp_path / "stop", run={
        "output_dir": str(tmp_path / "stop"), "max_steps": 4, "checkpoint_every": 100, "sample_every": 0,
        "progress": False})
    engine = Engine.from_recipe(r, callbacks=(StopAt(3),))
    assert engine.fit() == "interrupted"
    assert (tmp_path / "stop" / "checkpoints" / "step-00000003" / "COMPLETE").exists()
    assert not (tmp_path / "stop" / "final").exists()
    resumed = Engine.from_recipe(r)
    assert resumed.fit() == "completed" and resumed.global_step == 4
    a, b = student_weights(ref), student_weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def _add_recipe(model, images, out, max_steps, **run):
    return {
        "run": {"output_dir": str(out), "max_steps": max_steps, "checkpoint_every": 2, "sample_every": 0,
                "progress": False, "seed": 11, **run},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "real", "optim": {"lr": 1e-3, "betas": [0.0, 0.99]},
                    "lora": {"rank": 2}, "ema": {"decay": 0.5}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"images": str(images), "resolution": 32, "batch_size": 2, "random_flip": True},
        "train": {"device": "cpu"},
        "critics": [{"name": "add.discriminator", "optim": {"lr": 1e-3, "betas": [0.0, 0.99]},
                     "params": {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same",
                                "crop_prob": 0.0}}],
        "losses": [{"name": "add.adversarial"}, {"name": "add.distill", "weight": 2.5,
                                                 "params": {"reduction": "mean"}}],
    }


def test_adversarial_run_with_lora_resumes_bit_identically_in_one_process(tiny_sd15_path, tmp_path):
    """Critic, LoRA init, EMA, data crops/flips and every per-step draw survive a resume exactly, even
    with other random draws in between (the initialisations are seeded by the recipe, not the process)."""
    from distillkit.testing.shapes import write_shapes_dataset

    images = write_shapes_dataset(tmp_path / "shapes", n=6, size=40)
    full = Engine.from_recipe(_add_recipe(tiny_sd15_path, images, tmp_path / "full", 4))
    full.fit()
    torch.rand(100)  # disturb the global stream: nothing may depend on it
    half = Engine.from_recipe(_add_recipe(tiny_sd15_path, images, tmp_path / "half", 2))
    half.fit()
    resumed = Engine.from_recipe(_add_recipe(tiny_sd15_path, images, tmp_path / "half", 4))
    resumed.fit()
    a, b = student_weights(full), student_weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    ca = full.critics["discriminator"].trainable_state_dict()
    cb = resumed.critics["discriminator"].trainable_state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.shadow)


def test_export_from_a_bfloat16_teacher_runs_in_the_pipeline(tiny_sd15_path, tmp_path):
    r = recipe(tiny_sd15_path, tmp_path / "bf16", model={"family": "sd15", "pretrained": str(tiny_sd15_path),
                                                         "dtype": "bfloat16"})
    engine = Engine.from_recipe(r).setup()
    # the student starts from the original fp32 weights, not from the bf16-rounded teacher
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained(tiny_sd15_path, subfolder="unet")
    for (n, p), q in zip(engine.student.named_parameters().items(), original.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q), n
    engine.fit()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "bf16" / "final")
    for name in ("unet", "text_encoder", "vae"):  # one dtype throughout, whatever each library defaults to
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.float32}, name
    img = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, height=32, width=32,
               output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_gradient_accumulation_consumes_consecutive_batches_and_is_deterministic(tiny_sd15_path, tmp_path):
    def run(out):
        r = recipe(tiny_sd15_path, out, train={"device": "cpu", "gradient_accumulation_steps": 2},
                   data={"prompts": ["a", "b", "c", "d", "e"], "resolution": 32, "batch_size": 1})
        engine = Engine.from_recipe(r)
        seen = []
        real = engine.setup().data.batch
        engine.data.batch = lambda step: seen.append(step) or real(step)
        engine.fit(max_steps=2)
        return engine, seen

    e1, seen = run(tmp_path / "a")
    e2, _ = run(tmp_path / "b")
    assert seen[:4] == [0, 1, 2, 3]
    a, b = student_weights(e1), student_weights(e2)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_resolution_the_unet_cannot_divide_is_a_recipe_error(tiny_sd15_path, tmp_path):
    from distillkit.errors import RecipeError

    r = recipe(tiny_sd15_path, tmp_path / "res", data={"prompts": ["a"], "resolution": 36, "batch_size": 1})
    with pytest.raises(RecipeError, match=r"data.resolution: 36 is not a multiple of 16"):
        Engine.from_recipe(r).setup()


def test_grad_clip_zero_disables_clipping_and_logs_the_true_norm(tiny_sd15_path, tmp_path):
    def norm_after_one_step(clip, out):
        r = recipe(tiny_sd15_path, out, student={"timesteps": [999], "input": "noise",
                                                 "optim": {"lr": 1e-3, "grad_clip": clip}},
                   sample={"prompts": ["a"]})
        return Engine.from_recipe(r).step()["grad_norm/student"]

    unclipped = norm_after_one_step(0.0, tmp_path / "a")
    clipped = norm_after_one_step(1e-6, tmp_path / "b")  # clip_grad_norm_ reports the pre-clip norm
    assert unclipped > 0 and unclipped == pytest.approx(clipped, rel=1e-6)
