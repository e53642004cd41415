"""The shipped SiD recipes: what they resolve to, their one-key variants, and a tiny end-to-end run of each
through the ``distillkit run`` CLI, data-free and with data, whose exported ``final/`` reproduces
``distillkit sample``.

Only what a tiny CPU run needs is overridden with --set: the teacher folder, the data, sizes and step counts,
the adapter rank and, for SiDA, the warm-up (so the GAN term is on within three steps). Losses, scales,
guidance, timesteps, optimisers and layouts are the shipped recipe's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distillkit.cli import main
from distillkit.recipe.load import load_recipe
from distillkit_sid.functional import few_step_timesteps
from distillkit_sid.losses import SiDConfig

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
ONE_STEP = ["sid_sd15.toml", "sid_sdxl.toml", "sid_sdxl_zero_cfg.toml", "sid_sdxl_anti_cfg.toml"]
ALL = ONE_STEP + ["sid_sdxl_4step.toml", "sida_sdxl.toml"]


def _sid(resolved):
    (sid,) = [l for l in resolved.losses if l.entry.name == "sid.sid"]
    return sid


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_is_data_free_sid_from_sigma_noise_at_625(name):
    resolved = load_recipe(RECIPES / name)
    r = resolved.recipe
    assert (r.student.input, r.student.first_input, r.student.timesteps[0]) == ("noise", "sigma_noise", 625)
    assert r.student.timesteps == few_step_timesteps(625, len(r.student.timesteps))
    assert r.train.generator_sample == "fresh"  # the authors' code draws a new z for the generator update
    sid = _sid(resolved)
    assert isinstance(sid.config, SiDConfig) and sid.config.alpha == 1.0
    assert (sid.config.t_min, sid.config.t_max) == (20, 979)
    (critic,) = [c for c in resolved.critics if c.entry.name == "core.fake_score"]
    assert (critic.config.lora is None) == (name == "sid_sd15.toml")  # SD1.5: a full copy; SDXL: an adapter
    assert r.data.has_images == (name == "sida_sdxl.toml")


def test_guidance_of_each_variant():
    assert _sid(load_recipe(RECIPES / "sid_sdxl.toml")).config.guidance == "lsg"
    assert _sid(load_recipe(RECIPES / "sid_sdxl_zero_cfg.toml")).config.guidance == "zero_cfg"
    anti = _sid(load_recipe(RECIPES / "sid_sdxl_anti_cfg.toml")).config
    assert anti.guidance == "anti_cfg" and anti.fake_scale < 0
    assert load_recipe(RECIPES / "sid_sdxl_4step.toml").recipe.student.timesteps == [625, 468, 312, 156]


@pytest.mark.parametrize("strategy", ["zero_cfg", "lsg"])
def test_guidance_is_one_key(strategy):
    resolved = load_recipe(RECIPES / "sid_sdxl.toml", [f"losses[0].params.guidance={strategy}"])
    assert _sid(resolved).config.guidance == strategy


def test_sida_mixes_half_and_half_after_the_warm_up_and_the_gan_is_one_key():
    resolved = load_recipe(RECIPES / "sida_sdxl.toml")
    sid, gan = resolved.losses
    assert (sid.entry.name, gan.entry.name) == ("sid.sid", "sid.gan")  # the GAN after SiD: it takes SiD's weight
    assert (gan.config.t_min, gan.config.t_max) == (sid.config.t_min, sid.config.t_max)
    assert (sid.entry.weight_at(0), gan.entry.weight_at(0)) == (1.0, 0.0)
    assert (sid.entry.weight_at(78), gan.entry.weight_at(78)) == (0.5, 0.5)
    assert gan.critic_ids == sid.critic_ids == {"fake_score": "fake_score"}  # the fake score is the discriminator
    no_gan = load_recipe(RECIPES / "sida_sdxl.toml", ["losses[1].enabled=false"])
    assert [l.entry.name for l in no_gan.losses] == ["sid.sid"]


# -- tiny end-to-end runs through the CLI ---------------------------------------------------------------
PROMPTS = '["a red circle", "a blue square", "a green triangle"]'
TINY = ["model.dtype=float32", "train.mixed_precision=no", "train.device=cpu", "train.gradient_accumulation_steps=1",
        "data.resolution=32", "data.batch_size=2", "run.max_steps=3", "run.checkpoint_every=1",
        "run.keep_checkpoints=3", "run.sample_every=0", "run.log_every=1", "run.progress=false"]
EXTRA = {
    "sid_sd15.toml": [],
    "sid_sdxl.toml": ["critics[0].params.lora.rank=4"],
    "sid_sdxl_zero_cfg.toml": ["critics[0].params.lora.rank=4"],
    "sid_sdxl_anti_cfg.toml": ["critics[0].params.lora.rank=4"],
    "sid_sdxl_4step.toml": ["critics[0].params.lora.rank=4"],
    "sida_sdxl.toml": ["critics[0].params.lora.rank=4"] + [f"losses[{i}].weight.{k}={v}" for i in (0, 1)
                                                          for k, v in (("from_step", 0), ("to_step", 1))],
}


def _run(name, family, request, tmp_path):
    model = request.getfixturevalue(f"tiny_{family}_path")
    out = tmp_path / "run"
    sets = [*TINY, *EXTRA[name], f"model.pretrained={model}", f"run.output_dir={out}"]
    if name.startswith("sida"):
        from distillkit.testing.shapes import write_shapes_dataset

        sets.append(f"data.images={write_shapes_dataset(tmp_path / 'shapes', n=6, size=32)}")
    else:
        sets.append(f"data.prompts={PROMPTS}")
    args = ["run", str(RECIPES / name)]
    for s in sets:
        args += ["--set", s]
    return model, out, args


def _moved(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k].float(), b[k].float()) for k in a)


def _pipeline(family, final):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    import distillkit.schedulers  # noqa: F401  diffusers resolves StudentScheduler from imported modules

    return (StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline).from_pretrained(final)


@pytest.mark.parametrize("name", ALL)
def test_shipped_recipe_trains_exports_and_samples(name, request, tmp_path, capsys):
    from distillkit.inference import load_student, sample_images

    family = "sd15" if "sd15" in name else "sdxl"
    model, out, args = _run(name, family, request, tmp_path)
    assert main(args) == 0, capsys.readouterr().err
    resolved = load_recipe(out / "recipe.toml")
    timesteps = resolved.recipe.student.timesteps

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    keys = ["generator/sid.sid", "critic/sid.sid", "loss/sid.sid/weight_factor"]
    if name.startswith("sida"):
        keys += ["generator/sid.gan", "critic/sid.gan", "critic/sid.gan/d_real"]
    for key in keys:
        values = [r[key] for r in steps if key in r]
        assert len(values) == 3 and all(v == v and abs(v) != float("inf") for v in values), (key, values)

    # the student and the fake score train; the teacher is what final/ is compared against
    first, last = out / "checkpoints" / "step-00000001", out / "checkpoints" / "step-00000003"
    for role in ("student", "fake_score"):
        weights = f"weights-{role}.safetensors"
        assert _moved(load_file(first / weights), load_file(last / weights)), role
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert _moved(load_file(model / unet), load_file(out / "final" / unet)), "the exported student equals the teacher"
    pipe = _pipeline(family, out / "final")

    # final/ starts where the student was trained to: σ_625·z at t = 625, the student's own timesteps
    meta = json.loads((out / "final" / "distillkit.json").read_text())
    assert (meta["timesteps"], meta["first_input"]) == (timesteps, "sigma_noise")
    sigma = float(torch.sqrt(1 - pipe.scheduler.alphas_cumprod[625]))
    assert pipe.scheduler.init_noise_sigma == pytest.approx(sigma)
    assert list(pipe.scheduler.config.student_timesteps) == timesteps

    # ... and reproduces `distillkit sample` at 1 step (and at the student's full count)
    png = tmp_path / "grid.png"
    cli = ["sample", str(out / "final"), "--prompt", "a red circle", "--steps", "1", "--out", str(png),
           "--device", "cpu"]
    assert main(cli) == 0 and png.is_file()
    backbone, student, _ = load_student(out / "final")
    for k in sorted({1, len(timesteps)}):
        ours = sample_images(backbone, student, ["a red circle"], k, seed=7, resolution=32)
        theirs = pipe("a red circle", num_inference_steps=k, guidance_scale=0.0 if family == "sdxl" else 1.0,
                      height=32, width=32, generator=torch.Generator().manual_seed(7), output_type="pt").images
        assert pipe.scheduler.timesteps.tolist() == (timesteps[:1] if k == 1 else timesteps)
        assert (ours - theirs).abs().max() < 1e-4, f"{k} step(s): the exported pipeline differs from distillkit sample"
