"""``distillkit run`` against run folders that cannot be used as asked, table-driven.

Each case prepares a copy of one trained run folder (2 steps, a checkpoint after each), runs the real
command line in this process, and checks the exit code, the message, that no traceback was printed and,
for a refusal, that no file of the folder changed (contents compared byte for byte).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from distillkit.cli import main

RECIPE = """
[run]
name = "bad"
seed = 0
max_steps = 2
checkpoint_every = 1
sample_every = 0
progress = false

[model]
family = "sd15"
pretrained = "{model}"

[student]
timesteps = [999, 499]
input = "noise"
[student.optim]
lr = 0.001

[data]
prompts = ["a red circle", "a blue square"]
resolution = 32
batch_size = 2

[train]
device = "cpu"

[[losses]]
name = "core.regression"
"""


def snapshot(folder: Path) -> dict:
    """Every file's content hash (the lock file aside: a case may hold it itself)."""
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.fixture(scope="module")
def trained(tiny_sd15_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    recipe = base / "recipe.toml"
    recipe.write_text(RECIPE.format(model=tiny_sd15_path))
    assert main(["run", str(recipe), "--set", f'run.output_dir="{base / "run"}"']) == 0
    return recipe, base / "run"


# -- how each case prepares the folder ---------------------------------------------------------------

def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_lock(out: Path, _mp) -> None:
    (out / "run.lock").write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename,
                                              "command": "distillkit run old.toml", "started": "yesterday"}))


def _hold_lock(out: Path, mp):
    from distillkit.engine.lock import RunLock

    lock = RunLock(out)
    lock.acquire()
    return lock.release  # when the case ends


def _read_only(out: Path, mp) -> None:
    real = os.open

    def refuse(path, flags, *a, **k):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a, **k)

    mp.setattr(os, "open", refuse)


def _full_disk(out: Path, mp) -> None:
    import distillkit.engine.state as state

    real = state.save_file

    def full(tensors, path, *a, **k):
        if "step-00000003" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *a, **k)

    mp.setattr(state, "save_file", full)


def _no_tracker_packages(out: Path, mp) -> None:
    import accelerate.tracking

    mp.setattr(accelerate.tracking, "get_available_trackers", lambda: [])


def _ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


@dataclass
class Case:
    id: str
    prepare: Optional[Callable] = None  # (run folder, monkeypatch) -> None or a clean-up to call at the end
    sets: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    code: int = 2
    says: list[str] = field(default_factory=list)
    unchanged: bool = True
    output_dir: Optional[Callable[[Path], str]] = None  # default: the copied run folder


CASES = [
    Case("output_dir is a file", lambda o, mp: (shutil.rmtree(o), o.write_text("not a folder")),
         says=["is an existing file, not a folder"]),
    Case("output_dir under a file", lambda o, mp: (o / "file").write_text("x"),
         output_dir=lambda o: str(o / "file" / "run"), says=["is a file"]),
    Case("read-only folder", _read_only, says=["the file system is read-only", "choose another run.output_dir"]),
    Case("in use by another process", _hold_lock, says=[f"is in use by process {os.getpid()} on", "command:"]),
    Case("resume never with checkpoints", sets=['run.resume="never"'],
         says=["already has checkpoints and run.resume = 'never'; nothing was overwritten"]),
    Case("changed seed", sets=["run.seed=5"], says=["already holds a different run", "run.seed: 0 -> 5",
                                                     "--allow-changes"]),
    Case("changed seed, allowed", sets=["run.seed=5"], flags=["--allow-changes"], code=0, unchanged=False,
         says=["resuming with changed settings", "run.seed: 0 -> 5"]),
    Case("changed loss once recipe.toml is gone", lambda o, mp: (o / "recipe.toml").unlink(),
         sets=['losses=[{name="core.regression", weight=2.0}]'], says=["losses[0].weight: 1.0 -> 2.0"]),
    Case("no recipe left to compare with",
         lambda o, mp: [p.unlink() for p in [o / "recipe.toml", *o.glob("checkpoints/*/recipe.toml")]],
         says=["the folder's recipe is gone, so nothing can be compared"]),
    Case("unreadable recipe.toml", lambda o, mp: (o / "recipe.toml").write_text("[run\nseed = "),
         says=["recipe.toml cannot be read"]),
    Case("max_steps below the step reached", sets=["run.max_steps=1"],
         says=["run.max_steps: 2 -> 1 (below step 2, already reached)"]),
    Case("every checkpoint damaged",
         lambda o, mp: [_truncate(_ckpt(o, s) / "weights-student.safetensors") for s in (1, 2)],
         says=["none of the 2 checkpoints", "step-00000002: weights-student.safetensors has", "Nothing was changed"]),
    Case("newest checkpoint damaged", lambda o, mp: (_ckpt(o, 2) / "state.json").write_text(""),
         sets=["run.max_steps=3"], code=0, unchanged=False,
         says=["step-00000002 cannot be used: state.json has 0 bytes", "resumed from step 1"]),
    Case("resume path that does not exist", sets=['run.resume="{out}/checkpoints/step-00000009"'],
         says=["run.resume", "does not exist"]),
    Case("resume path to a damaged checkpoint", lambda o, mp: _truncate(_ckpt(o, 1) / "optim-student.json"),
         sets=['run.resume="{out}/checkpoints/step-00000001"'],
         says=["step-00000001 cannot be used: optim-student.json has"]),
    Case("resume path to a checkpoint of other settings", sets=['run.resume="{out}/checkpoints/step-00000002"',
                                                                  "student.optim.lr=0.01"],
         output_dir=lambda o: str(o.parent / "elsewhere"),
         says=["step-00000002 cannot be used: written with other settings: student.optim.lr: 0.001 -> 0.01"]),
    Case("tracker package missing", _no_tracker_packages, sets=['log.report_to=["wandb"]'],
         says=["log.report_to: wandb needs a package that is not installed: pip install wandb"]),
    Case("unknown placeholder", sets=['run.output_dir="runs/{nme}"'], output_dir=lambda o: None,
         says=["unknown placeholder '{nme}'"]),
    Case("lone brace", sets=['run.output_dir="runs/{"'], output_dir=lambda o: None, says=["a lone '{'"]),
    Case("full disk at a checkpoint", _full_disk, sets=["run.max_steps=4"], unchanged=False,
         says=["cannot write checkpoint step-00000003", "the disk is full",
               "the last complete checkpoint is step-00000002"]),
    Case("cut-off metrics line", lambda o, mp: open(o / "metrics.jsonl", "a").write('{"step": 3, "lo'),
         sets=["run.max_steps=3", "run.sample_every=3"], code=0, unchanged=False),
    Case("lock left by a killed run", _stale_lock, code=0, unchanged=False,
         says=["taking over the lock left by process", "command: distillkit run old.toml"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_folder_problem(case, trained, tmp_path, monkeypatch, capsys):
    recipe, source = trained
    out = tmp_path / "run"
    shutil.copytree(source, out)
    cleanup = case.prepare(out, monkeypatch) if case.prepare else None
    where = case.output_dir(out) if case.output_dir else str(out)
    before = snapshot(out)
    args = ["run", str(recipe)] + (["--set", f'run.output_dir="{where}"'] if where else [])
    for s in case.sets:
        args += ["--set", s.replace("{out}", str(out))]
    try:
        code = main(args + case.flags)
    finally:
        monkeypatch.undo()
        if callable(cleanup):
            cleanup()
    err = " ".join(capsys.readouterr().err.split())
    assert code == case.code, err[-3000:]
    assert "Traceback" not in err
    for phrase in case.says:
        assert phrase in err, (phrase, err[-3000:])
    if case.unchanged:
        assert snapshot(out) == before, "a refused start changed the run folder"
    if code and where and where != str(out):
        assert not Path(where).exists(), "a refused start left a folder behind"
    assert not out.is_dir() or not list(out.rglob(".tmp-*")), "a temporary was left"
    assert not out.is_dir() or not (out / "run.lock").exists(), "the run folder was not released"


def test_there_are_enough_cases():
    assert len(CASES) >= 20
