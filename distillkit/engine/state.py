"""Saving and restoring a run's trainable state in the checkpoint format of :mod:`distillkit.checkpoint`.

What a checkpoint holds is exactly what exact resume needs and nothing else: every trained role's own
weights, optimiser and LR-schedule state, the EMA, the fp16 loss scale, the step, the non-finite streak
and the budget counters. No RNG state: every random draw of step k is seeded from (seed, k, rank,
purpose), so the step number is enough.

Restoring is two passes. :func:`check_state` reads only headers and JSON and finds anything that would
stop :func:`read_state` half-way (a missing file, a tensor of another shape, an optimiser reference to a
tensor that is not there); only then does :func:`read_state` copy values into the live model. A
checkpoint that fails the check has changed nothing, so resume can try an older one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from distillkit import checkpoint as fmt
from distillkit.engine.trained import Trained
from distillkit.errors import ModelLoadError


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_state(tmp: Path, trained: dict[str, Trained], critics: dict, ema, scaler, info: dict,
                recipe_text: Optional[str] = None) -> None:
    """Fill the (temporary) checkpoint directory ``tmp``. ``info`` goes to ``state.json``, ``recipe_text``
    (the resolved recipe) to ``recipe.toml``."""
    for name, t in trained.items():
        weights = critics[name].trainable_state_dict() if t.kind == "critic" else t.state_dict()
        save_file(_tensors(weights), str(tmp / fmt.weights_file(name)))
        fmt.save_tree(t.optimizer.state_dict(), tmp / fmt.optim_stem(name))
        fmt.save_tree(t.scheduler.state_dict(), tmp / fmt.sched_stem(name))
    if ema is not None:
        save_file(_tensors(ema.state_dict()), str(tmp / fmt.EMA))
    if scaler is not None:  # fp16 loss scale: part of exact resume
        fmt.save_tree(scaler.state_dict(), tmp / fmt.SCALER)
    if recipe_text is not None:
        (tmp / fmt.RECIPE).write_text(recipe_text)
    (tmp / fmt.STATE).write_text(json.dumps(info))


# -- the check ------------------------------------------------------------------------------------
class _Shape:
    """Stands for a tensor in an optimiser skeleton during the check: its shape, no data."""

    def __init__(self, shape: tuple):
        self.shape = shape


def _tree_shapes(path_stem: Path) -> Any:
    """The nested state of ``save_tree``, with :class:`_Shape` in place of every tensor."""
    shapes = fmt.tensor_shapes(Path(str(path_stem) + ".safetensors"))
    skeleton = json.loads(Path(str(path_stem) + ".json").read_text())
    refs: list[str] = []
    _collect_refs(skeleton, refs)
    missing = [r for r in refs if r not in shapes]
    if missing:
        raise ValueError(f"{path_stem.name}.json refers to tensors its .safetensors lacks (e.g. {missing[:3]})")
    return fmt.unflatten_state(skeleton, {k: _Shape(v) for k, v in shapes.items()})


def _collect_refs(obj: Any, out: list[str]) -> None:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            out.append(obj["__tensor__"])
            return
        for v in obj.values():
            _collect_refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_refs(v, out)


def _optimizer_problem(saved: Any, optimizer) -> Optional[str]:
    """Whether the saved optimiser state fits ``optimizer``: groups, parameter counts, moment shapes."""
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        return "it is not an optimiser state"
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        return f"{len(saved['param_groups'])} parameter groups where the optimiser has {len(groups)}"
    index: dict[Any, torch.Tensor] = {}
    for g, (sg, live) in enumerate(zip(saved["param_groups"], groups)):
        ids = sg.get("params", []) if isinstance(sg, dict) else []
        if len(ids) != len(live["params"]):
            return f"group {g} has {len(ids)} parameters where the optimiser has {len(live['params'])}"
        index.update(zip(ids, live["params"]))
    for pid, values in saved["state"].items():
        if pid not in index:
            return f"state for parameter {pid!r}, which no group lists"
        for key, value in (values.items() if isinstance(values, dict) else []):
            if isinstance(value, _Shape) and len(value.shape) and tuple(value.shape) != tuple(index[pid].shape):
                return (f"{key} of parameter {pid} has shape {tuple(value.shape)}, the parameter "
                        f"{tuple(index[pid].shape)}")
    return None


def check_state(path: Path, trained: dict[str, Trained], critics: dict, student, ema) -> Optional[str]:
    """Why :func:`read_state` would fail on ``path`` (or load something that does not fit), or None.

    Reads safetensors headers and JSON only; changes nothing."""
    path = Path(path)
    try:
        for name, t in trained.items():
            what = "the student" if t.kind == "student" else f"critic {name!r}"
            f = path / fmt.weights_file(name)
            if not f.exists():
                return f"no weights for {what} ({f.name}): written by a recipe with other [[critics]]?"
            live = critics[name].trainable_state_dict() if t.kind == "critic" else student.state_dict()
            problem = fmt.describe_mismatch({k: tuple(v.shape) for k, v in live.items()}, fmt.tensor_shapes(f))
            if problem:
                return f"{what}'s weights do not fit: {problem}"
            problem = _optimizer_problem(_tree_shapes(path / fmt.optim_stem(name)), t.optimizer)
            if problem:
                return f"the optimiser state of {what} does not fit: {problem}"
            _tree_shapes(path / fmt.sched_stem(name))
        if ema is not None and (path / fmt.EMA).exists():
            problem = fmt.describe_mismatch({k: tuple(v.shape) for k, v in ema.shadow.items()},
                                            fmt.tensor_shapes(path / fmt.EMA))
            if problem:
                return f"the EMA weights do not fit: {problem}"
        if Path(str(path / fmt.SCALER) + ".json").exists():
            _tree_shapes(path / fmt.SCALER)
        info = json.loads((path / fmt.STATE).read_text())
        if not isinstance(info, dict) or not isinstance(info.get("step"), int) or info["step"] < 0:
            return f"{fmt.STATE} has no valid step"
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # unreadable header or JSON
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


# -- restoring ------------------------------------------------------------------------------------
def read_state(path: Path, trained: dict[str, Trained], critics: dict, student, ema, scaler) -> dict:
    """Restore everything :func:`write_state` wrote; returns the ``state.json`` contents.
    Call :func:`check_state` first: a failure in here leaves the model half restored."""
    path = Path(path)
    if not (path / fmt.MARKER).exists():
        raise ModelLoadError(f"{path} is not a complete distillkit checkpoint (no {fmt.MARKER} marker)")
    for name, t in trained.items():
        f = path / fmt.weights_file(name)
        if not f.exists():
            what = "the student" if t.kind == "student" else f"critic {name!r}"
            raise ModelLoadError(f"checkpoint {path} has no weights for {what} ({f.name}); was it written by a "
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


def restore_counters(engine, state: dict, names: tuple[str, ...]) -> None:
    """Put ``state.json``'s step, non-finite streak and budget counters back into ``engine``."""
    engine.global_step = int(state["step"])
    engine._nonfinite_streak = int(state.get("nonfinite_streak", 0))
    saved = state.get("counters", {})
    for k in names:
        if k in saved:
            engine.counters[k] = saved[k]
    engine.counters["critic_updates"] = dict(saved.get("critic_updates", {}))
