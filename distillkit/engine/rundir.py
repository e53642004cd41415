"""The run folder: what a run writes besides checkpoints, and the checks that a folder holds *this* run.

Layout::

    <output_dir>/recipe.toml        the fully resolved recipe (defaults filled in) of the latest start
                 run.json           one entry per start: command line, versions, plugins, resume, changes
                 run.lock           while a process trains here (see :mod:`.lock`)
                 metrics.jsonl      one JSON object per logged step (plus start/resume/end events)
                 metrics.png        loss curves
                 samples/step-*.png rows = sampling steps, columns = prompts
                 checkpoints/step-*/
                 checkpoints/rejected-step-*/  checkpoints resume could not use, with the reason inside
                 final/             the exported student (distillkit.export)

Order of a start: lock, compare the recipe with the folder's (:meth:`RunFolder.check_start`, which
reads only), build, resume, and only then write (:meth:`RunFolder.write_start`): a start that is refused
or whose resume fails leaves every file of the folder as it was.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Optional

from distillkit import checkpoint as fmt
from distillkit.engine.changes import Change, compare, needing_permission
from distillkit.engine.lock import RunLock
from distillkit.engine.outputs import MetricsLog
from distillkit.errors import RunFolderError
from distillkit.files import write_text_atomic, writing

log = logging.getLogger("distillkit")

REJECTED_PREFIX = "rejected-"
REASON_FILE = "REJECTED.txt"


class RunFolder:
    def __init__(self, path: str | Path, keep_checkpoints: int):
        self.path = Path(path)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.checkpoints = fmt.CheckpointWriter(self.path / "checkpoints", keep_checkpoints)
        self.lock = RunLock(self.path)
        #: every difference from the folder's recipe found by :meth:`check_start`
        self.changes: list[Change] = []

    @property
    def final(self) -> Path:
        return self.path / "final"

    def sample_path(self, step: int) -> Path:
        return self.path / "samples" / f"step-{step:08d}.png"

    # -- before anything is written ------------------------------------------------------------------
    def reached_step(self) -> int:
        found = fmt.list_checkpoints(self.checkpoints.root)
        return found[-1][0] if found else 0

    def reference_recipe(self) -> tuple[Optional[str], str]:
        """The recipe this folder was trained with: its ``recipe.toml``, else the newest checkpoint's copy."""
        existing = self.path / "recipe.toml"
        if existing.is_file():
            return existing.read_text(), str(existing)
        for _, ckpt in reversed(fmt.list_checkpoints(self.checkpoints.root)):
            if (ckpt / fmt.RECIPE).is_file():
                return (ckpt / fmt.RECIPE).read_text(), str(ckpt / fmt.RECIPE)
        return None, ""

    def has_work(self) -> bool:
        return bool(fmt.list_checkpoints(self.checkpoints.root)) or self.final.exists()

    def check_start(self, recipe_text: str, resume: str, allow_changes: bool) -> None:
        """Refuse, before anything is loaded or written, to mix two runs in one folder.

        ``resume = "never"`` with checkpoints present, and a recipe that differs from the folder's in a
        setting that shapes the weights (:mod:`.changes`), unless ``allow_changes``."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} is an existing file, not a folder; choose another "
                                 f"run.output_dir")
        ckpts = fmt.list_checkpoints(self.checkpoints.root)
        if resume == "never" and ckpts:
            raise RunFolderError(f"{self.checkpoints.root} already has checkpoints and run.resume = 'never'; "
                                 f"nothing was overwritten. Use run.resume = 'auto' or a new run.output_dir.")
        old_text, where = self.reference_recipe()
        new = tomllib.loads(recipe_text)
        if old_text is None:
            self.changes = []
            if ckpts or self.final.exists():
                self.changes = [Change("recipe.toml", "(missing)", "(this recipe)",
                                       "the folder's recipe is gone, so nothing can be compared")]
        else:
            try:
                old = tomllib.loads(old_text)
            except tomllib.TOMLDecodeError as exc:
                old, self.changes = None, [Change("recipe.toml", "(unreadable)", "(this recipe)",
                                                  f"{where} cannot be read ({exc})")]
            if old is not None:
                self.changes = compare(old, new, self.reached_step())
        blocked = needing_permission(self.changes)
        if blocked and not allow_changes:
            listing = "\n".join(f"  - {c.describe()}" for c in blocked[:15])
            if len(blocked) > 15:
                listing += f"\n  - ... and {len(blocked) - 15} more"
            raise RunFolderError(
                f"{self.path} already holds a different run (its recipe: {where or 'none'}); these settings "
                f"differ:\n{listing}\nResuming would mix two runs, so nothing was overwritten. Use a new "
                f"run.output_dir, restore the settings, or pass --allow-changes (Engine(allow_changes=True)) to "
                f"resume with them; run.json then records each change.")

    # -- after the resume succeeded --------------------------------------------------------------------
    def write_start(self, recipe_text: str, entry: dict) -> None:
        """Write the resolved recipe and append this start to ``run.json``'s history."""
        with writing("the run's recipe and history", self.path, "choose another run.output_dir"):
            self.path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path / "recipe.toml", recipe_text)
            history = read_history(self.path / "run.json")
            history["starts"].append(entry)
            write_text_atomic(self.path / "run.json", json.dumps(history, indent=2, default=str))

    def set_aside(self, rejected: list[tuple[Path, str]]) -> list[str]:
        """Rename checkpoints resume could not use to ``rejected-step-*`` (with the reason inside), so that
        pruning never keeps them in place of good ones and the next resume does not read them again.
        Nothing is deleted: the user decides. Returns the new names."""
        moved = []
        for path, reason in rejected:
            if not path.is_dir() or not path.name.startswith("step-"):
                continue
            target, n = path.with_name(REJECTED_PREFIX + path.name), 1
            while target.exists():
                n += 1
                target = path.with_name(f"{REJECTED_PREFIX}{path.name}-{n}")
            with writing("a rejected checkpoint's new name", target):
                os.replace(path, target)
                (target / REASON_FILE).write_text(f"resume could not use this checkpoint: {reason}\n")
            moved.append(str(target))
            log.warning("moved %s aside to %s (delete it once you no longer need it)", path, target.name)
        return moved


def read_history(path: Path) -> dict:
    """``run.json`` as ``{"format": 2, "starts": [...]}``; a single-start file of older versions becomes the
    first entry, an unreadable one is kept under ``"unreadable"`` rather than lost."""
    if not path.is_file():
        return {"format": 2, "starts": []}
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return {"format": 2, "starts": [], "unreadable": text}
    if isinstance(data, dict) and isinstance(data.get("starts"), list):
        return data
    return {"format": 2, "starts": [data]}


def start_entry(pm, source, *, resumed_from: Optional[tuple[Path, int]], changes: list[Change],
                rejected: list[tuple[Path, str]], data: Optional[dict]) -> dict:
    """One start of the run, for ``run.json``: who, with what, from where."""
    import importlib.metadata as md

    versions = {}
    for dist in ("distillkit", "torch", "diffusers", "transformers", "accelerate", "peft", "safetensors"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv, "command": shlex.join(sys.argv), "cwd": os.getcwd(), "host": platform.node(),
        "pid": os.getpid(), "python": platform.python_version(), "versions": versions,
        "plugins": plugin_versions(pm), "source": str(source) if source else None,
        "resumed_from": ({"checkpoint": str(resumed_from[0]), "step": resumed_from[1]} if resumed_from else None),
        "rejected_checkpoints": [{"checkpoint": str(p), "reason": r} for p, r in rejected],
        "changes": [c.record() for c in changes],
        "data": data,
    }


def plugin_versions(pm) -> dict[str, Optional[str]]:
    """Each registered plugin's distribution and version (None for a plugin passed in by a program)."""
    import importlib.metadata as md

    dists = {}
    for ep in md.entry_points(group="distillkit"):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            dists.setdefault(ep.name, f"{dist.metadata['Name']} {dist.version}")
    return {name: dists.get(name) for name, _ in sorted(pm.list_name_plugin(), key=lambda x: x[0])
            if not name.isdigit()}  # unnamed registrations (callbacks) get their id() as name
