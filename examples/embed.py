"""distillkit inside your own program: your Accelerator, your loop, your callbacks, diffusers at the end.

    python examples/embed.py [WORKDIR]        # default: runs/embed; offline, CPU, under a minute

It builds the tiny offline test models (as ``python -m distillkit.testing DIR`` does), trains a student
for a few steps with a loop of its own over ``engine.step()``, reads the metrics in memory, exports the
student, loads the export with plain diffusers and generates an image in one step; then a second engine
on the same run folder resumes from its last checkpoint. ``docs/embedding.md`` walks through it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: a hub lookup must fail at once

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

import distillkit  # noqa: E402


def recipe_for(workdir: Path) -> dict:
    """The recipe as a dict: the same keys and checks as a TOML file."""
    return {
        "run": {"name": "embedded", "output_dir": str(workdir / "run"), "seed": 0, "max_steps": 6,
                "checkpoint_every": 3, "sample_every": 0, "log_every": 1},
        "model": {"family": "sd15", "pretrained": str(workdir / "fixtures" / "sd15")},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-4}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 64, "batch_size": 2},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "losses": [{"name": "core.regression"}],
    }


class History:
    """A callback: any object whose methods carry ``@distillkit.hookimpl`` and are named after runtime hooks
    (``on_setup``, ``on_step_end``, ``on_samples``, ``on_checkpoint``, ``on_run_end``). A method may take
    any subset of the hook's keyword arguments."""

    def __init__(self):
        self.losses: dict[int, float] = {}
        self.checkpoints: dict[int, Path] = {}

    @distillkit.hookimpl
    def on_step_end(self, step, metrics):
        self.losses[step] = metrics["generator/total"]

    @distillkit.hookimpl
    def on_checkpoint(self, step, path):
        self.checkpoints[step] = Path(path)


def train(workdir: Path, accelerator: Accelerator) -> Path:
    engine = distillkit.Engine.from_recipe(recipe_for(workdir), accelerator=accelerator)
    history = History()
    engine.add_callback(history)
    engine.setup()  # loads the models, resumes if the run folder has a checkpoint, writes recipe.toml

    steps = []
    while engine.global_step < engine.recipe.run.max_steps:
        metrics = engine.step()  # critic phase (if any critic), generator phase, hooks, metrics.jsonl, checkpoints
        steps.append(metrics)
        print(f"step {metrics['step']}: loss {metrics['loss/core.regression/mse']:.5f}, "
              f"grad norm {metrics['grad_norm/student']:.4f}")

    # The callback saw every step, and metrics.jsonl holds the same values as the dicts step() returned.
    assert history.losses == {m["step"]: m["generator/total"] for m in steps}
    logged = [json.loads(line) for line in (engine.output_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in logged if "event" not in r}
    assert all(logged[m["step"]]["loss/core.regression/mse"] == m["loss/core.regression/mse"] for m in steps)
    assert sorted(history.checkpoints) == [3, 6] and all(p.is_dir() for p in history.checkpoints.values())

    final = engine.save_final()  # the student as a diffusers folder (every component in float32)
    engine.close()  # release the run folder (fit() does this itself)
    return final


def generate(final: Path, out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    image.save(out)
    print(f"wrote {out} ({image.size[0]}x{image.size[1]}) with diffusers from {final}")


def resume(workdir: Path, accelerator: Accelerator) -> None:
    """A second engine on the same run folder continues from its newest checkpoint (logged as INFO)."""
    engine = distillkit.Engine.from_recipe(recipe_for(workdir), accelerator=accelerator)
    status = engine.fit(max_steps=8, samples=False, export=False)  # fit() = step() in a loop, then close()
    assert (status, engine.global_step) == ("completed", 8), (status, engine.global_step)


def main() -> int:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/embed").resolve()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distillkit").setLevel(logging.INFO)  # resumes, skipped data, fallbacks

    from distillkit.testing import build_tiny_sd15

    build_tiny_sd15(workdir / "fixtures" / "sd15")  # a tiny random-weight SD1.5-shaped teacher, offline
    shutil.rmtree(workdir / "run", ignore_errors=True)  # this example starts a fresh run each time

    accelerator = Accelerator(cpu=True, mixed_precision="no")  # must agree with train.mixed_precision
    final = train(workdir, accelerator)
    generate(final, workdir / "one_step.png")
    resume(workdir, accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
