"""Saving and restoring a run's trainable state in the checkpoint format of :mod:`distillkit.checkpoint`.

What a checkpoint holds is exactly what exact resume needs and nothing else: every trained role's own
weights, optimiser and LR-schedule state, the EMA, the fp16 loss scale, the step, the non-finite streak
and the budget counters. No RNG state: every random draw of step k is seeded from (seed, k, rank,
purpose), so the step number is enough.
"""

from __future__ import annotations

import json
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

from distillkit import checkpoint as fmt
from distillkit.engine.trained import Trained
from distillkit.errors import DistillkitError


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_state(tmp: Path, trained: dict[str, Trained], critics: dict, ema, scaler, info: dict) -> None:
    """Fill the (temporary) checkpoint directory ``tmp``. ``info`` goes to ``state.json``."""
    for name, t in trained.items():
        weights = critics[name].trainable_state_dict() if t.kind == "critic" else t.state_dict()
        save_file(_tensors(weights), str(tmp / fmt.weights_file(name)))
        fmt.save_tree(t.optimizer.state_dict(), tmp / fmt.optim_stem(name))
        fmt.save_tree(t.scheduler.state_dict(), tmp / fmt.sched_stem(name))
    if ema is not None:
        save_file(_tensors(ema.state_dict()), str(tmp / fmt.EMA))
    if scaler is not None:  # fp16 loss scale: part of exact resume
        fmt.save_tree(scaler.state_dict(), tmp / fmt.SCALER)
    (tmp / fmt.STATE).write_text(json.dumps(info))


def read_state(path: Path, trained: dict[str, Trained], critics: dict, student, ema, scaler) -> dict:
    """Restore everything :func:`write_state` wrote; returns the ``state.json`` contents."""
    path = Path(path)
    if not (path / fmt.MARKER).exists():
        raise DistillkitError(f"{path} is not a complete distillkit checkpoint (no {fmt.MARKER} marker)")
    for name, t in trained.items():
        f = path / fmt.weights_file(name)
        if not f.exists():
            what = "the student" if t.kind == "student" else f"critic {name!r}"
            raise DistillkitError(f"checkpoint {path} has no weights for {what} ({f.name}); was it written by a "
                                  f"recipe with different [[critics]]?")
        state = load_file(str(f))
        if t.kind == "critic":
            critics[name].load_trainable_state_dict(state)
        else:
            student.load_state_dict(state)
        t.optimizer.load_state_dict(fmt.load_tree(path / fmt.optim_stem(name)))
        t.scheduler.load_state_dict(fmt.load_tree(path / fmt.sched_stem(name)))
    if ema is not None:
        if (path / fmt.EMA).exists():
            ema.load_state_dict(load_file(str(path / fmt.EMA)))
        else:
            ema.reset()
    if scaler is not None and Path(str(path / fmt.SCALER) + ".json").exists():
        scaler.load_state_dict(fmt.load_tree(path / fmt.SCALER))
    return json.loads((path / fmt.STATE).read_text())
