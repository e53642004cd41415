"""The exported ``final/`` reproduces ``distillkit sample`` through the plain diffusers pipeline, at 1 step and
at the student's full step count, for a student that starts from ε at t = 999 (ADD, DMD2: exported with
diffusers' own LCMScheduler) and for a data-free one that starts from σ·ε at t = 625 (SiD: the student's
own timesteps in ``StudentScheduler``); full and LoRA students alike."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit import Engine
from distillkit.inference import load_student, sample_images

KINDS = {
    "add": {"timesteps": [999, 749, 499, 249], "first_input": "noise", "scheduler": "LCMScheduler"},
    "sid": {"timesteps": [625, 468, 312, 156], "first_input": "sigma_noise", "scheduler": "StudentScheduler"},
}


def train_and_export(model, out, family, kind, lora):
    k = KINDS[kind]
    student = {"timesteps": k["timesteps"], "input": "noise", "first_input": k["first_input"],
               "optim": {"lr": 1e-3}}
    if lora:
        student["lora"] = {"rank": 2}
    r = {"run": {"output_dir": str(out), "max_steps": 1, "sample_every": 0, "seed": 1},
         "model": {"family": family, "pretrained": str(model)}, "student": student,
         "teacher": {"guidance_scale": 2.0},
         "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
         "train": {"device": "cpu"}, "losses": [{"name": "core.regression"}],
         "sample": {"prompts": ["a"], "steps": [1]}}
    engine = Engine.from_recipe(r)
    assert engine.fit() == "completed"
    return out / "final"


def pipeline(family, final, base, lora):
    """What the README tells users to do: from_pretrained on a full export; for a LoRA export, the base
    pipeline, load_lora_weights, and the export's scheduler by the class its config names."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    import distillkit.schedulers  # noqa: F401  diffusers resolves StudentScheduler from imported modules
    from distillkit.models.loading import load_scheduler

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    if not lora:
        return cls.from_pretrained(final)
    pipe = cls.from_pretrained(base)
    pipe.load_lora_weights(final, weight_name="pytorch_lora_weights.safetensors")
    pipe.scheduler = load_scheduler(str(final))
    return pipe


@pytest.mark.parametrize("family,kind,lora", [("sd15", "add", False), ("sd15", "sid", False),
                                              ("sdxl", "sid", False), ("sd15", "sid", True)])
def test_pipeline_reproduces_distillkit_sample(family, kind, lora, tiny_sd15_path, tiny_sdxl_path, tmp_path):
    model = tiny_sd15_path if family == "sd15" else tiny_sdxl_path
    final = train_and_export(model, tmp_path / "run", family, kind, lora)
    meta = json.loads((final / "distillkit.json").read_text())
    assert meta["scheduler"] == KINDS[kind]["scheduler"] and meta["timesteps"] == KINDS[kind]["timesteps"]
    backbone, student, res = load_student(final)
    pipe = pipeline(family, final, model, lora)
    for steps in (1, 4):
        ours = sample_images(backbone, student, ["a red circle"], steps, seed=7, resolution=32)
        theirs = pipe("a red circle", num_inference_steps=steps, guidance_scale=0.0 if family == "sdxl" else 1.0,
                      height=32, width=32, generator=torch.Generator().manual_seed(7), output_type="pt").images
        expected = [KINDS[kind]["timesteps"][0]] if steps == 1 else KINDS[kind]["timesteps"]
        assert pipe.scheduler.timesteps.tolist() == expected
        assert (ours - theirs).abs().max() < 1e-4, f"{steps} step(s): exported pipeline differs from distillkit sample"
