"""The run folder: what a run writes besides checkpoints, and the check that a folder holds *this* run.

Layout::

    <output_dir>/recipe.toml        the fully resolved recipe (defaults filled in)
                 run.json           versions, plugins, command line
                 metrics.jsonl      one JSON object per logged step (plus resume/end events)
                 metrics.png        loss curves
                 samples/step-*.png rows = sampling steps, columns = prompts
                 checkpoints/step-*/
                 final/             the exported student (distillkit.export)
"""

from __future__ import annotations

import json
import platform
import sys
import tomllib
from pathlib import Path

from distillkit.checkpoint import CheckpointWriter
from distillkit.engine.outputs import MetricsLog
from distillkit.errors import DistillkitError

#: recipe sections that may change between a run and its resumption without it being "another run"
RESUMABLE_CHANGES = ("run", "sample")


class RunFolder:
    def __init__(self, path: str | Path, keep_checkpoints: int):
        self.path = Path(path)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.checkpoints = CheckpointWriter(self.path / "checkpoints", keep_checkpoints)

    @property
    def final(self) -> Path:
        return self.path / "final"

    def sample_path(self, step: int) -> Path:
        return self.path / "samples" / f"step-{step:08d}.png"

    def check_same_run(self, recipe_text: str) -> None:
        """Refuse to mix two different runs in one folder (before anything is loaded or written)."""
        existing = self.path / "recipe.toml"
        ckpts = self.path / "checkpoints"
        has_work = (ckpts.is_dir() and any(ckpts.iterdir())) or self.final.exists()
        if not (existing.exists() and has_work):
            return
        old, new = tomllib.loads(existing.read_text()), tomllib.loads(recipe_text)
        changed = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        if changed:
            raise DistillkitError(
                f"{self.path} already holds a different run (recipe sections {changed} differ); nothing was "
                f"overwritten. Set run.output_dir (or run.name) to a new folder, or delete the old one.")

    def write_start(self, recipe_text: str, plugins: list[str], source) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "recipe.toml").write_text(recipe_text)
        (self.path / "run.json").write_text(json.dumps(run_info(plugins, source), indent=2))


def run_info(plugins: list[str], source) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("distillkit", "torch", "diffusers", "transformers", "accelerate", "peft"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"argv": sys.argv, "python": platform.python_version(), "versions": versions,
            "plugins": sorted(plugins), "source": str(source) if source else None}
