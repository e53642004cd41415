"""The shipped ADD recipes, run end to end through the CLI on the tiny fixtures (issue #3's done-when).

Only what a tiny CPU run needs is overridden with --set: the teacher folder, the data, the size, and a
tiny random-init feature network with the teacher's own text encoder for conditioning. Everything else —
losses, weights, weighting, reductions, timesteps, optimiser settings — is the shipped recipe's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from distillkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY_OVERRIDES = [
    "model.dtype=float32", "train.mixed_precision=no", "train.device=cpu",
    "data.resolution=64", "data.batch_size=2",
    "run.max_steps=4", "run.checkpoint_every=4", "run.sample_every=0", "run.log_every=1", "run.progress=false",
    "critics[0].params.feature_network=tiny", "critics[0].params.weights=", "critics[0].params.allow_random_init=true",
    "critics[0].params.text_encoder=backbone", "critics[0].params.image_encoder=same",
    "critics[0].params.crop_prob=0.0", "critics[0].optim.lr=1e-3", "student.optim.lr=1e-4",
]


@pytest.mark.parametrize("recipe,family", [("add_sd15.toml", "sd15"), ("add_sdxl.toml", "sdxl")])
def test_shipped_add_recipe_trains_and_samples(recipe, family, request, tmp_path, capsys):
    from distillkit.testing.shapes import write_shapes_dataset

    model = request.getfixturevalue(f"tiny_{family}_path")
    shapes = write_shapes_dataset(tmp_path / "shapes", n=8, size=64)
    out = tmp_path / "run"
    sets = [*TINY_OVERRIDES, f"model.pretrained={model}", f"data.images={shapes}", f"run.output_dir={out}"]
    args = ["run", str(ROOT / "recipes" / recipe)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err

    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("generator/add.adversarial", "generator/add.distill", "critic/add.adversarial"):
        values = [r[key] for r in steps]
        assert all(v == v and abs(v) != float("inf") for v in values), (key, values)
        assert len(set(values)) > 1, f"{key} did not move: {values}"

    png = tmp_path / "grid.png"
    assert main(["sample", str(out / "final"), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--steps", "1", "--steps", "4", "--out", str(png), "--device", "cpu"]) == 0
    with Image.open(png) as im:
        width, height = im.size  # 2 prompts × (1, 4) steps of 64 px, 2 px padding, label margins
        assert height == 16 + 2 * 64 + 3 * 2 and width > 2 * 64 + 3 * 2
