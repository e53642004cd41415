"""Run-directory outputs: sample grids, loss plots, metrics log, pickle-free checkpoint trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distillkit.engine.checkpoint import CheckpointWriter, latest_checkpoint, list_checkpoints, load_tree, save_tree
from distillkit.engine.outputs import MetricsLog, save_grid
from distillkit.engine.plots import PANEL_H, PANEL_W, curve_keys, plot_metrics


def test_grid_places_each_image_in_its_cell(tmp_path):
    imgs = torch.zeros(4, 3, 8, 8)
    imgs[1, 0] = 1.0  # second image pure red
    path = save_grid(imgs, tmp_path / "g.png", ncols=2, pad=2)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    assert (arr[2:10, 12:20] == [255, 0, 0]).all() and (arr[2:10, 2:10] == 0).all()


def test_labelled_grid_adds_margins(tmp_path):
    path = save_grid(torch.rand(4, 3, 8, 8), tmp_path / "g.png", ncols=2, row_labels=["1 step", "4 steps"],
                     col_labels=["a", "b"])
    w, h = Image.open(path).size
    assert h == 16 + 22 and w > 22


def test_metrics_plot_has_a_panel_per_term_and_skips_nonfinite(tmp_path):
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
