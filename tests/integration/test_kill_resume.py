"""A real interruption: `distillkit run` is SIGKILLed after a checkpoint and then re-run.

The resumed run must end with exactly the student weights of an uninterrupted run (CPU, same seed), and
say whose lock it took over. SIGTERM (preemption) must leave a checkpoint of the step it was in and exit
cleanly. Two runs started at once on one folder: one trains, the other is refused naming it, and the
folder holds one consistent run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch
from safetensors.torch import load_file

from distillkit import checkpoint as fmt

ROOT = Path(__file__).resolve().parents[2]


def _args(model, out, max_steps, seed=0):
    return [sys.executable, "-m", "distillkit", "run", str(ROOT / "recipes" / "tiny_cpu.toml"),
            "--set", f"model.pretrained={model}", "--set", f"run.output_dir={out}", "--set", f"run.seed={seed}",
            "--set", f"run.max_steps={max_steps}", "--set", "run.checkpoint_every=2", "--set", "run.sample_every=0",
            "--set", "data.images=", "--set", 'data.prompts=["a red circle","a blue square","a green triangle"]',
            "--set", "student.input=noise", "--set", "critics=[]",
            "--set", 'losses=[{name="core.regression"}]', "--set", "data.resolution=32",
            "--set", "data.batch_size=2", "--set", "run.progress=false"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


def _final_student(out: Path) -> dict:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "weights-student.safetensors"))


def test_sigkill_then_resume_equals_uninterrupted(tiny_sd15_path, tmp_path):
    ref = subprocess.Popen(_args(tiny_sd15_path, tmp_path / "ref", 6), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # alongside the run to kill: half the wait
    out = tmp_path / "killed"
    proc = subprocess.Popen(_args(tiny_sd15_path, out, 6), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "step-00000002" / "COMPLETE", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed; the test proves nothing"
    _, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-2000:]

    res = subprocess.run(_args(tiny_sd15_path, out, 6), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from step" in res.stderr
    assert f"taking over the lock left by process {proc.pid}" in " ".join(res.stderr.split())
    assert not list((out / "checkpoints").glob(".tmp-*")), "the killed run's half-written checkpoint is left"
    a, b = _final_student(tmp_path / "ref"), _final_student(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_writes_a_resumable_checkpoint(tiny_sd15_path, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(_args(tiny_sd15_path, out, 10_000), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "step-00000002" / "COMPLETE", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    assert steps and steps[-1] >= 2
    events = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
    assert '"status": "interrupted"' in events[-1]


def test_two_runs_started_at_once_on_one_folder(tiny_sd15_path, tmp_path):
    out = tmp_path / "shared"
    procs = {seed: subprocess.Popen(_args(tiny_sd15_path, out, 10_000, seed=seed), env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (0, 1)}
    try:
        start = time.time()
        while all(p.poll() is None for p in procs.values()):
            assert time.time() - start < 240, "neither start was refused"
            time.sleep(0.1)
        loser = next(s for s, p in procs.items() if p.poll() is not None)
        winner = 1 - loser
        err = " ".join(procs[loser].stderr.read().split())
        assert procs[loser].returncode == 2, err[-2000:]
        assert f"is in use by process {procs[winner].pid} on" in err and "command:" in err
        assert "Traceback" not in err
        _wait_for(out / "checkpoints" / "step-00000002" / "COMPLETE", procs[winner])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        _, err = procs[winner].communicate(timeout=120)
    assert procs[winner].returncode == 130, err[-2000:]

    assert tomllib.loads((out / "recipe.toml").read_text())["run"]["seed"] == winner
    starts = json.loads((out / "run.json").read_text())["starts"]
    assert [s["pid"] for s in starts] == [procs[winner].pid]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == list(range(1, len(steps) + 1)), "two runs' steps are interleaved"
    assert all(fmt.verify_checkpoint(p) is None for _, p in fmt.list_checkpoints(out / "checkpoints"))
    assert not (out / "run.lock").exists()
