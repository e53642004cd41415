"""The checkpoint format, defined once: the engine writes it, resume and ``distillkit sample`` read it.

A checkpoint is a directory ``step-00000100`` holding safetensors files for every tensor (student,
critics, EMA, optimiser moments) and JSON for everything else. It is written into a temporary sibling
and renamed into place only after a ``COMPLETE`` marker is inside it, so a process killed mid-write
leaves the previous checkpoint as the latest good one. Optimiser state dicts (nested dicts of tensors
and numbers) are split into a JSON skeleton plus a flat safetensors file: nothing is ever unpickled.

Files (``<name>`` is ``student`` or a critic's instance id)::

    weights-<name>.safetensors   the role's own trainable weights (a LoRA role: its adapter only)
    optim-<name>.{json,safetensors}, sched-<name>.{json,safetensors}
    ema.safetensors              the student's EMA weights (if the recipe keeps one)
    grad-scaler.{json,safetensors}  fp16 loss scale
    state.json                   step, non-finite streak, budget counters
    COMPLETE                     written last
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
STATE = "state.json"
EMA = "ema.safetensors"
SCALER = "grad-scaler"


def weights_file(name: str) -> str:
    return f"weights-{name}.safetensors"


def optim_stem(name: str) -> str:
    return f"optim-{name}"


def sched_stem(name: str) -> str:
    return f"sched-{name}"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


# -- nested state <-> (json skeleton, flat tensors) ------------------------------------------------
def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested structure by a reference; collect tensors in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, prefix), flatten_state(v, tensors, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, tensors, prefix) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickling it")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_tree(obj: Any, path_stem: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(obj, tensors)
    save_file(tensors, str(path_stem) + ".safetensors")
    Path(str(path_stem) + ".json").write_text(json.dumps(skeleton))


def load_tree(path_stem: Path) -> Any:
    tensors = load_file(str(path_stem) + ".safetensors")
    return unflatten_state(json.loads(Path(str(path_stem) + ".json").read_text()), tensors)


def load_params(targets: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str,
                exact: bool = True) -> None:
    """Copy ``state`` into the tensors ``targets`` (name -> parameter/buffer), checking names and shapes.

    ``exact``: every target must be in ``state`` too (a checkpoint that lacks weights the model has was
    written by another recipe). A mismatch is a :class:`~distillkit.errors.DistillkitError` naming
    examples, never a half-loaded model.
    """
    from distillkit.errors import DistillkitError

    unknown = [k for k in state if k not in targets]
    missing = [k for k in targets if k not in state] if exact else []
    shapes = [k for k in state if k in targets and tuple(state[k].shape) != tuple(targets[k].shape)]
    if unknown or missing or shapes:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} tensors this model lacks (e.g. {unknown[:3]})")
        if missing:
            parts.append(f"no value for {len(missing)} of its tensors (e.g. {missing[:3]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: {tuple(state[k].shape)} vs "
                         f"{tuple(targets[k].shape)})")
        raise DistillkitError(f"checkpoint {what} does not fit: " + "; ".join(parts) +
                              ". The recipe's model, LoRA or critic settings differ from the run that wrote it.")
    with torch.no_grad():
        for k, v in state.items():
            targets[k].copy_(v.to(device=targets[k].device, dtype=targets[k].dtype))


def student_weights(path: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The student's weights from a checkpoint directory: its EMA when kept and ``use_ema``."""
    from distillkit.errors import DistillkitError

    path = Path(path)
    f = path / EMA if use_ema and (path / EMA).exists() else path / weights_file("student")
    if not f.exists():
        raise DistillkitError(f"checkpoint {path} has no student weights ({f.name})")
    return load_file(str(f))


# -- directories ---------------------------------------------------------------------------------
def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first (incomplete temporaries are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


class CheckpointWriter:
    """Writes ``files`` into a temp dir, marks it complete, renames it into place, prunes old ones."""

    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    def write(self, step: int, writer) -> Path:
        """``writer(tmp_dir)`` fills the directory; returns the final path."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = step_dir(self.root, step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        writer(tmp)
        (tmp / MARKER).write_text(str(step))
        if final.exists():  # re-doing a step after resume from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        for _, path in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            if stale.is_dir() and not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)
