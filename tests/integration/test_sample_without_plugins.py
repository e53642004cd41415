"""Sampling needs the model family only: an ADD run's checkpoint samples where the ADD plugin is blocked."""

import os
import subprocess
import sys

from distillkit import Engine
from distillkit.testing.shapes import write_shapes_dataset


def test_checkpoint_samples_with_the_training_plugin_blocked(tiny_sd15_path, tmp_path):
    images = write_shapes_dataset(tmp_path / "shapes", n=4, size=32)
    out = tmp_path / "run"
    recipe = {
        "run": {"output_dir": str(out), "max_steps": 1, "checkpoint_every": 1, "sample_every": 0},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [999, 499], "input": "real", "lora": {"rank": 2}},
        "data": {"images": str(images), "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu"},
        "critics": [{"name": "add.discriminator", "params": {"feature_network": "tiny", "text_encoder": "backbone",
                                                              "image_encoder": "same", "crop_prob": 0.0}}],
        "losses": [{"name": "add.adversarial"}, {"name": "add.distill", "params": {"space": "latent"}}],
        "sample": {"prompts": ["a"], "steps": [1]},
    }
    Engine.from_recipe(recipe).fit(export=False)
    ckpt = out / "checkpoints" / "step-00000001"
    env = {**os.environ, "DISTILLKIT_BLOCK_PLUGINS": "add", "HF_HUB_OFFLINE": "1"}
    png = tmp_path / "s.png"
    done = subprocess.run([sys.executable, "-m", "distillkit", "sample", str(ckpt), "--prompt", "a red circle",
                           "--steps", "2", "--out", str(png), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 0
