"""Run-directory outputs: sample grids, loss plots, metrics log, pickle-free checkpoint trees, the
checkpoint manifest, the writer's temporaries and modes, and the run-folder lock."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from distillkit import checkpoint as fmt
from distillkit.checkpoint import CheckpointWriter, latest_checkpoint, list_checkpoints, load_tree, save_tree
from distillkit.engine.lock import RunLock
from distillkit.engine.outputs import MetricsLog, save_grid
from distillkit.engine.plots import PANEL_H, PANEL_W, curve_keys, curve_rows, figure, plot_metrics
from distillkit.errors import RunFolderError


def test_grid_places_each_image_in_its_cell(tmp_path):
    imgs = torch.zeros(4, 3, 8, 8)
    imgs[1, 0] = 1.0  # second image pure red
    path = save_grid(imgs, tmp_path / "g.png", ncols=2, pad=2)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    assert (arr[2:10, 12:20] == [255, 0, 0]).all() and (arr[2:10, 2:10] == 0).all()


def test_small_images_are_enlarged_by_a_whole_factor_without_smoothing(tmp_path):
    imgs = torch.zeros(2, 3, 16, 16)
    imgs[0, :, 0, 0] = 1.0  # one white pixel in the first image's corner
    path = save_grid(imgs, tmp_path / "g.png", ncols=2, pad=2, min_cell=40)  # 16 -> 48 (factor 3)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (48 + 4, 2 * 50 + 2, 3)
    assert (arr[2:5, 2:5] == 255).all() and (arr[5:50, 5:50] == 0).all()  # a sharp 3x3 block, nothing spread


def test_labelled_grid_adds_margins(tmp_path):
    path = save_grid(torch.rand(4, 3, 8, 8), tmp_path / "g.png", ncols=2, row_labels=["1 step", "4 steps"],
                     col_labels=["a", "b"])
    w, h = Image.open(path).size
    assert h == 16 + 22 and w > 22


def test_metrics_plot_has_a_panel_per_term_and_skips_nonfinite(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the PIL drawing, used without matplotlib
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(1, 6):
        log.write({"step": step, "generator/total": 1.0 / step, "loss/x.y/a": float("nan") if step == 3 else step,
                   "lr/student": 1e-4})
    log.write({"event": "end", "status": "completed", "step": 5})
    records = log.read()
    assert curve_keys(records) == ["generator/total", "loss/x.y/a"]
    path = plot_metrics(records, tmp_path / "m.png")
    assert Image.open(path).size == (3 * PANEL_W, PANEL_H)
    assert plot_metrics([], tmp_path / "none.png") is None


def test_checkpoint_tree_round_trips_optimizer_state_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.0, 0.99))
    p.grad = torch.ones(3)
    opt.step()
    save_tree(opt.state_dict(), tmp_path / "opt")
    assert {f.suffix for f in tmp_path.iterdir()} == {".json", ".safetensors"}
    state = load_tree(tmp_path / "opt")
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.5)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["betas"] == (0.0, 0.99) and fresh.param_groups[0]["lr"] == 0.1
    assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]]["exp_avg"], opt.state[p]["exp_avg"])
    with pytest.raises(TypeError, match="without pickling"):
        save_tree({"x": object()}, tmp_path / "bad")


def test_a_write_killed_midway_leaves_the_previous_checkpoint_latest(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=2)
    writer.write(1, lambda d: (d / "a.txt").write_text("1"))

    def crash(d):
        (d / "a.txt").write_text("2")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        writer.write(2, crash)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    for step in (2, 3, 4):
        writer.write(step, lambda d: None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir()), "a crashed write's temp dir is left"


def test_step_context_cache_scopes():
    from distillkit.losses.base import Phase, StepContext

    shared: dict = {}
    ctxs = [StepContext(phase=phase, step=0, backbone=None, teacher=None, student=None, prompts=[], cond=None,
                        uncond=None, resolution=8, student_x0=torch.zeros(1), student_t=torch.zeros(1),
                        student_input=torch.zeros(1), batch_memo=shared) for phase in (Phase.CRITIC, Phase.GENERATOR)]
    calls = []
    for ctx in ctxs:
        ctx.cached("per-phase", lambda: calls.append("p") or len(calls))
        ctx.cached("per-step", lambda: calls.append("s") or len(calls), across_phases=True)
    assert calls == ["p", "s", "p"]  # the per-step value was computed once for both phases


# -- loss curves with matplotlib ---------------------------------------------------------------------

def test_matplotlib_panels_have_labelled_step_axes_and_plot_the_logged_values(tmp_path):
    pytest.importorskip("matplotlib")
    records = [{"step": s, "generator/total": 10.0 - s, "loss/a.b/mse": s * 0.5} for s in (1, 2, 3)]
    fig = figure(records, curve_keys(records))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["generator/total", "loss/a.b/mse"]
    assert all(ax.get_xlabel() == "step" for ax in axes)
    assert [ax.get_ylabel() for ax in axes] == ["total", "mse"]
    raw = axes[1].get_lines()[0]
    assert list(raw.get_xdata()) == [1, 2, 3] and list(raw.get_ydata()) == [0.5, 1.0, 1.5]
    path = plot_metrics(records, tmp_path / "m.png")
    assert Image.open(path).size != (3 * PANEL_W, PANEL_H)  # drawn by matplotlib, not the PIL fallback


def test_curves_show_the_trajectory_the_resumed_run_took():
    records = [{"step": 1, "loss/x": 1.0}, {"step": 2, "loss/x": 2.0}, {"step": 3, "loss/x": 99.0},
               {"event": "resume", "step": 2}, {"step": 3, "loss/x": 3.0}]
    assert [(r["step"], r["loss/x"]) for r in curve_rows(records)] == [(1, 1.0), (2, 2.0), (3, 3.0)]


# -- metrics.jsonl cut off by a kill ---------------------------------------------------------------

def test_a_cut_off_metrics_line_is_skipped_and_the_next_write_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss/x": 1.0}\n{"step": 2, "loss/')  # killed mid-write
    log = MetricsLog(path)
    assert [r["step"] for r in log.read()] == [1] and log.skipped_lines == 1
    log.write({"step": 2, "loss/x": 2.0})
    log.write({"step": 3, "loss/x": 3.0})
    assert [r["step"] for r in MetricsLog(path).read()] == [1, 2, 3]
    assert path.read_text().splitlines()[1] == '{"step": 2, "loss/'  # the fragment stays alone on its line


# -- checkpoint manifest ---------------------------------------------------------------------------

def _checkpoint(root, step=1):
    def fill(d):
        save_file({"w": torch.arange(6.0)}, str(d / "weights-student.safetensors"))
        (d / fmt.STATE).write_text(json.dumps({"step": step}))

    return CheckpointWriter(root, keep=5).write(step, fill)


def _rewrite_manifest(path):
    (path / fmt.MANIFEST).unlink()
    fmt.write_manifest(path, int(path.name.split("-")[1]))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "weights-student.safetensors").write_bytes(
        (p / "weights-student.safetensors").read_bytes()[:-8]), "bytes where 8 more were written"),
    (lambda p: (p / "weights-student.safetensors").unlink(), "weights-student.safetensors is missing"),
    (lambda p: (p / fmt.STATE).write_text(""), "state.json has 0 bytes where 11 more were written"),
    (lambda p: (p / fmt.STATE).write_text('{"step": 9}'), "state.json differs from what was written"),
    (lambda p: (p / fmt.MANIFEST).unlink(), "no manifest.json"),
    (lambda p: ((p / fmt.STATE).write_text('{"step": 1000000}'), _rewrite_manifest(p)),
     "says step 1000000 but the folder is step 1"),
])
def test_a_checkpoint_whose_files_changed_is_not_trusted(tmp_path, damage, reason):
    path = _checkpoint(tmp_path)
    assert fmt.verify_checkpoint(path) is None
    damage(path)
    assert reason in fmt.verify_checkpoint(path)


# -- writer: temporaries, failures, modes -----------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_go_before_the_write_and_live_ones_stay(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".tmp-step-00000007-{host}-{_dead_pid()}"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-step-00000007-{host}-{live_proc.pid}"
        for d in (dead, live):
            d.mkdir()
            (d / "big.bin").write_bytes(b"x" * 1000)
        seen = []
        CheckpointWriter(tmp_path, keep=2).write(1, lambda d: seen.append(dead.exists()))
        assert seen == [False], "a dead writer's temporary must be gone before the write (a full disk needs it)"
        assert live.is_dir(), "a live process's temporary was deleted"
    finally:
        live_proc.kill()
        live_proc.wait()


def test_a_full_disk_is_one_message_and_leaves_no_temporary(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=2)
    _checkpoint(tmp_path, 1)

    def full(d):
        (d / "half.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunFolderError) as err:
        writer.write(2, full)
    assert "the disk is full" in str(err.value) and "the last complete checkpoint is step-00000001" in str(err.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_weight_files_get_the_mode_of_every_other_file(tmp_path):
    path = _checkpoint(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors alone would write its files 0600
    umask = os.umask(0)
    os.umask(umask)
    assert modes["weights-student.safetensors"] == 0o666 & ~umask


# -- the run-folder lock ------------------------------------------------------------------------------

def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(RunFolderError) as err:
        second.acquire()
    msg = str(err.value)
    assert f"in use by process {os.getpid()} on {socket.gethostname()}" in msg and "command:" in msg
    first.release()
    second.acquire()  # free again
    assert second.held and second.took_over is None
    second.release()
    assert not (tmp_path / "run").exists(), "the lock created the folder and left it empty"


def test_the_lock_of_a_killed_process_is_taken_over_with_its_name(tmp_path, caplog):
    code = ("import sys, os, signal; from distillkit.engine.lock import RunLock; "
            "lock = RunLock(sys.argv[1]); lock.acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    assert proc.wait() == -9 and (tmp_path / "run.lock").exists()
    lock = RunLock(tmp_path)
    with caplog.at_level("WARNING", logger="distillkit"):
        lock.acquire()
    assert lock.took_over["pid"] == proc.pid
    assert "taking over the lock left by process" in caplog.text
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_progress_bar_shows_a_run_name_with_brackets_as_written():
    """rich reads ``[...]`` as markup: an unescaped ``add[xl]`` would show as ``add`` (or raise)."""
    from rich.text import Text

    from distillkit.engine.progress import StepProgress

    bar = StepProgress("add[xl]", total=10, completed=0, enabled=False)
    assert Text.from_markup(bar.bar.tasks[0].description).plain == "add[xl]"
    bar.advance({"generator/total": 0.5})
    assert Text.from_markup(bar.bar.tasks[0].description).plain == "add[xl] loss 0.5"
    assert bar.bar.tasks[0].completed == 1
