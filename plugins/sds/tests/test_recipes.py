"""The shipped SDS-family recipes: they resolve with the authors' values, and each runs end to end through the
``distillkit run`` CLI on the tiny fixtures, finite, moving the weights it should, and its export samples as
``distillkit sample`` does at 1 step.

Only what a tiny CPU run needs is overridden with --set: the teacher folder, the data, the size, the run length,
fp32 instead of bf16, and learning rates without warm-up large enough to move tiny weights in a few steps.
Losses, weights, params, timesteps, update ratios and phase order are the shipped recipe's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distillkit.cli import main
from distillkit.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes"
PROMPTS = '["a red circle", "a blue square"]'


def test_shipped_recipes_carry_the_authors_values():
    sds = load_recipe(RECIPES / "sds_sd15.toml")
    assert sds.recipe.teacher.guidance_scale == 101.0  # DreamFusion ω = 100 in the diffusers convention
    (loss,) = sds.losses
    assert (loss.config.weighting, loss.config.t_min, loss.config.t_max, loss.config.reduction) == ("sds", 20, 980, "sum")

    (nfsd,) = load_recipe(RECIPES / "nfsd_sd15.toml").losses
    assert (nfsd.config.scale, nfsd.config.threshold) == (7.5, 200)

    vsd = load_recipe(RECIPES / "vsd_sd15.toml")
    (critic,) = vsd.critics
    assert critic.config.lora is not None and critic.config.lora.rank == 4
    assert vsd.recipe.teacher.guidance_scale == 7.5 and vsd.recipe.train.critic_first is False
    assert vsd.losses[0].config.cond_dropout == 0.1 and vsd.losses[0].config.t_max_at(5001) == 500

    for name, ratio, cfg, gen_w, convs, steps in (("dmd2_sd15.toml", 10, 1.75, 1e-3, 2, [999]),
                                                  ("dmd2_sdxl.toml", 5, 8.0, 5e-3, 4, [999, 749, 499, 249])):
        r = load_recipe(RECIPES / name)
        assert r.recipe.train.generator_every == ratio and r.recipe.teacher.guidance_scale == cfg
        assert r.recipe.student.timesteps == steps and r.recipe.student.input == "noise"
        fake, head = r.critics
        assert fake.config.lora is None and head.config.num_convs == convs  # DMD2: a full fake-UNet copy
        dm, gan = r.losses
        assert (dm.entry.name, dm.entry.weight, dm.config.reduction) == ("sds.dmd2", 1.0, "mean")
        assert (gan.entry.name, gan.entry.weight, gan.entry.critic_weight) == ("sds.dmd2_gan", gen_w, 1e-2)
        assert gan.critic_ids == {"fake_score": "fake_score", "gan_head": "gan_head"}


# -- end to end through the CLI -------------------------------------------------------------------------------
TINY = ["model.dtype=float32", "train.mixed_precision=no", "train.device=cpu", "data.resolution=32",
        "data.batch_size=2", "run.log_every=1", "run.sample_every=0", "run.progress=false",
        "student.optim.lr=1e-4", "student.optim.warmup_steps=0"]

#: recipe -> (family, data-free?, steps, critic ids, the recipe's generator_every)
RUNS = {
    "sds_sd15.toml": ("sd15", True, 1, (), 1),
    "nfsd_sd15.toml": ("sd15", True, 1, (), 1),
    "vsd_sd15.toml": ("sd15", True, 1, ("fake_score",), 1),
    "dmd2_sd15.toml": ("sd15", False, 1, ("fake_score", "gan_head"), 10),
    "dmd2_sdxl.toml": ("sdxl", False, 1, ("fake_score", "gan_head"), 5),
}


def run_recipe(name, request, tmp_path):
    family, data_free, steps, critics, _ = RUNS[name]
    model = request.getfixturevalue(f"tiny_{family}_path")
    out = tmp_path / "run"
    sets = [*TINY, f"model.pretrained={model}", f"run.output_dir={out}", f"run.max_steps={steps}",
            f"run.checkpoint_every={steps}"]
    if data_free:
        sets.append(f"data.prompts={PROMPTS}")
    else:
        from distillkit.testing.shapes import write_shapes_dataset

        sets.append(f"data.images={write_shapes_dataset(tmp_path / 'shapes', n=4, size=32)}")
    for j, _ in enumerate(critics):
        sets += [f"critics[{j}].optim.lr=1e-3", f"critics[{j}].optim.warmup_steps=0"]
    args = ["run", str(RECIPES / name)]
    for s in sets:
        args += ["--set", s]
    return model, out, args


@pytest.mark.parametrize("name", RUNS)
def test_shipped_recipe_trains_and_exports(name, request, tmp_path, capsys):
    family, _, steps, critics, every = RUNS[name]
    model, out, args = run_recipe(name, request, tmp_path)
    assert main(args) == 0, capsys.readouterr().err

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "event" not in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    values = [v for r in records for k, v in r.items() if k.startswith(("loss/", "generator/", "critic/"))]
    assert values and all(v == v and abs(v) != float("inf") for v in values)
    last = records[-1]
    # the right weights moving: the student on its steps only (every `generator_every`-th from the first), every
    # critic on every step
    assert [("grad_norm/student" in r) for r in records] == [i % every == 0 for i in range(steps)]
    assert last["budget/student_updates"] == len(range(0, steps, every))
    for cid in critics:
        assert last[f"budget/critic_updates/{cid}"] == steps, cid
        assert all(r[f"grad_norm/{cid}"] > 0 for r in records), cid

    teacher = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    student = load_file(out / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(v, student[k]) for k, v in teacher.items()), "the student did not move"
    if "fake_score" in critics:
        ckpt = load_file(next((out / "checkpoints").glob("step-*")) / "weights-fake_score.safetensors")
        lora_up = [v for k, v in ckpt.items() if "lora_B" in k]
        if lora_up:  # an adapter starts with B = 0
            assert any(bool(v.abs().sum() > 0) for v in lora_up), "the fake score's adapter did not move"
        else:  # a full copy starts as the teacher
            copy = {k.removeprefix("net."): v for k, v in ckpt.items()}
            assert any(not torch.equal(v, copy[k]) for k, v in teacher.items()), "the fake score did not move"

    # export round trip at 1 step: the plain diffusers pipeline reproduces `distillkit sample`
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from distillkit.inference import load_student, sample_images

    backbone, student_role, _ = load_student(out / "final")
    pipe = (StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline).from_pretrained(out / "final")
    ours = sample_images(backbone, student_role, ["a red circle"], 1, seed=7, resolution=32)
    theirs = pipe("a red circle", num_inference_steps=1, guidance_scale=0.0 if family == "sdxl" else 1.0,
                  height=32, width=32, generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert pipe.scheduler.timesteps.tolist() == [999]
    assert (ours - theirs).abs().max() < 1e-4
