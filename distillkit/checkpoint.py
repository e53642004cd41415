"""The checkpoint format, defined once: the engine writes it, resume and ``distillkit sample`` read it.

A checkpoint is a directory ``step-00000100`` holding safetensors files for every tensor (student,
critics, EMA, optimiser moments) and JSON for everything else. It is written into a temporary sibling
and renamed into place only after a ``COMPLETE`` marker is inside it, so a process killed mid-write
leaves the previous checkpoint as the latest good one. Optimiser state dicts (nested dicts of tensors
and numbers) are split into a JSON skeleton plus a flat safetensors file: nothing is ever unpickled.

A marker says the writer finished, not that the files are still what it wrote: a disk that filled up
later, a copy that was cut off, a hand edit. So the writer's last file before the marker is a manifest
of every file's size and SHA-256, and :func:`verify_checkpoint` checks it (and that ``state.json``'s step
is the folder's) before a checkpoint is trusted; resume falls back to an older one when it fails.

Files (``<name>`` is ``student`` or a critic's instance id)::

    weights-<name>.safetensors   the role's own trainable weights (a LoRA role: its adapter only)
    optim-<name>.{json,safetensors}, sched-<name>.{json,safetensors}
    ema.safetensors              the student's EMA weights (if the recipe keeps one)
    grad-scaler.{json,safetensors}  fp16 loss scale
    state.json                   step, non-finite streak, budget counters
    recipe.toml                  the resolved recipe that wrote it (resume compares it with its own)
    manifest.json                size and SHA-256 of each file above
    COMPLETE                     written last
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
STATE = "state.json"
RECIPE = "recipe.toml"
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


def describe_mismatch(target_shapes: dict[str, tuple], state_shapes: dict[str, tuple], exact: bool = True
                      ) -> Optional[str]:
    """What keeps tensors of ``state_shapes`` (name -> shape) from loading into ``target_shapes``, or None."""
    unknown = [k for k in state_shapes if k not in target_shapes]
    missing = [k for k in target_shapes if k not in state_shapes] if exact else []
    shapes = [k for k in state_shapes if k in target_shapes and tuple(state_shapes[k]) != tuple(target_shapes[k])]
    parts = []
    if unknown:
        parts.append(f"{len(unknown)} tensors this model lacks (e.g. {unknown[:3]})")
    if missing:
        parts.append(f"no value for {len(missing)} of its tensors (e.g. {missing[:3]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: {tuple(state_shapes[k])} vs "
                     f"{tuple(target_shapes[k])})")
    return "; ".join(parts) or None


def load_params(targets: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str,
                exact: bool = True) -> None:
    """Copy ``state`` into the tensors ``targets`` (name -> parameter/buffer), checking names and shapes.

    ``exact``: every target must be in ``state`` too (a checkpoint that lacks weights the model has was
    written by another recipe). A mismatch is a :class:`~distillkit.errors.ModelLoadError` naming
    examples, never a half-loaded model.
    """
    from distillkit.errors import ModelLoadError

    problem = describe_mismatch({k: tuple(v.shape) for k, v in targets.items()},
                                {k: tuple(v.shape) for k, v in state.items()}, exact)
    if problem:
        raise ModelLoadError(f"checkpoint {what} does not fit: {problem}. The recipe's model, LoRA or critic "
                             f"settings differ from the run that wrote it.")
    with torch.no_grad():
        for k, v in state.items():
            targets[k].copy_(v.to(device=targets[k].device, dtype=targets[k].dtype))


def tensor_shapes(path: Path) -> dict[str, tuple]:
    """Names and shapes of a safetensors file, read from its header alone (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def student_weights(path: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The student's weights from a checkpoint directory: its EMA when kept and ``use_ema``."""
    from distillkit.errors import ModelLoadError

    path = Path(path)
    f = path / EMA if use_ema and (path / EMA).exists() else path / weights_file("student")
    if not f.exists():
        raise ModelLoadError(f"checkpoint {path} has no student weights ({f.name})")
    return load_file(str(f))


# -- manifest ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """Record every file's size and hash; the writer's last file before the marker."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in (MARKER, MANIFEST)}
    (Path(folder) / MANIFEST).write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))


def verify_checkpoint(path: Path) -> Optional[str]:
    """Why the checkpoint ``path`` cannot be trusted, or None when its files are the ones written.

    Checks the marker, that every file of the manifest is there with its size and hash, and that the
    step of ``state.json`` and of the manifest is the folder's (a hand-edited step would make resume skip
    or repeat training silently). Reads every byte, so it costs about one read of the checkpoint."""
    path = Path(path)
    m = _STEP_DIR.match(path.name)
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker: the write never finished"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written by an older distillkit, or damaged): its files cannot be checked"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, want in sorted(listed.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            diff = want.get("bytes", 0) - size
            what = f"{diff} more were written" if diff > 0 else f"{-diff} fewer were written"
            return f"{name} has {size} bytes where {what} (cut off or overwritten)"
        if _sha256(f) != want.get("sha256"):
            return f"{name} differs from what was written (its SHA-256 does not match the manifest)"
    for name in (STATE,):
        if name not in listed:
            return f"{name} is not in the manifest"
    try:
        step = json.loads((path / STATE).read_text())["step"]
    except (ValueError, KeyError, TypeError):
        return f"{STATE} has no step"
    folder_step = int(m.group(1)) if m else None
    if folder_step is not None and (step != folder_step or manifest.get("step") != folder_step):
        return f"{STATE} says step {step} but the folder is step {folder_step}"
    return None


# -- directories ---------------------------------------------------------------------------------
def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoints under ``root`` whose write finished, oldest first (temporaries are ignored; whether
    their files are intact is :func:`verify_checkpoint`'s question)."""
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_TMP = re.compile(r"^\.tmp-step-\d{8}-(?:(?P<host>.+)-)?(?P<pid>\d+)(?:\.replaced)?$")


class CheckpointWriter:
    """Writes ``files`` into a temp dir, adds the manifest and the marker, renames it into place, prunes.

    Temporaries are named after the writer (``.tmp-step-00000100-<host>-<pid>``). One whose writer is
    provably gone (this host, no such process) is removed *before* the next write, so a half-written
    checkpoint of a killed run does not keep the disk full; one of a live process is never touched. A
    failed write removes its own temporary at once and is one :class:`~distillkit.errors.RunFolderError`.
    """

    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep
        self.host = socket.gethostname()

    def _tmp(self, name: str, suffix: str = "") -> Path:
        return self.root / f".tmp-{name}-{self.host}-{os.getpid()}{suffix}"

    def write(self, step: int, writer: Callable[[Path], None]) -> Path:
        """``writer(tmp_dir)`` fills the directory; returns the final path."""
        from distillkit.files import folder_error, give_ordinary_mode

        final = step_dir(self.root, step)
        tmp, old = self._tmp(final.name), self._tmp(final.name, ".replaced")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_stale()
            for leftover in (tmp, old):
                if leftover.exists():
                    shutil.rmtree(leftover)
            tmp.mkdir()
            writer(tmp)
            write_manifest(tmp, step)
            give_ordinary_mode([p for p in tmp.iterdir() if p.suffix == ".safetensors"], tmp)
            (tmp / MARKER).write_text(str(step))
            if final.exists():  # re-doing a step after resuming from an earlier checkpoint
                os.replace(final, old)
            os.replace(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back at once
            if isinstance(exc, OSError):
                last = latest_checkpoint(self.root)
                keep = f"the last complete checkpoint is {last.name}" if last else "no checkpoint was written yet"
                raise folder_error(exc, f"checkpoint {final.name}", self.root,
                                   f"{keep}; free space (or fix the folder) and run the same command to "
                                   f"resume") from exc
            raise
        shutil.rmtree(old, ignore_errors=True)
        self._prune()
        return final

    def stale_temporaries(self) -> list[Path]:
        """Temporaries whose writer is gone: this host's, of a process that no longer runs."""
        if not self.root.is_dir():
            return []
        stale = []
        for p in self.root.glob(".tmp-step-*"):
            m = _TMP.match(p.name)
            if not m or not p.is_dir():
                continue
            pid, host = int(m.group("pid")), m.group("host")
            mine = pid == os.getpid() and host in (None, self.host)
            if not mine and host in (None, self.host) and not _pid_alive(pid):
                stale.append(p)
        return stale

    def remove_stale(self) -> None:
        for p in self.stale_temporaries():
            shutil.rmtree(p, ignore_errors=True)

    def _prune(self) -> None:
        for _, path in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        self.remove_stale()
