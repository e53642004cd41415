"""What differs between the recipe a run folder was trained with and the one now resuming it.

Resuming continues a run only if the settings that shaped its weights are the ones it was trained
with: another seed draws other noise and data from the resumed step on, another learning rate or loss
makes a hybrid of two runs, and the folder's ``recipe.toml`` would then describe neither. So every
difference is listed, key by key, and those outside :data:`FREE` need the user's explicit permission
(``--allow-changes``; ``Engine(allow_changes=True)``), after which :mod:`.rundir` records them in
``run.json``. ``run.max_steps`` may grow (train longer) but not fall below the step already reached.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

#: keys that only say how long to train, how often to write, where, and what to show: changing them
#: on resume continues the same run
FREE = {f"run.{k}" for k in ("name", "output_dir", "max_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                             "sample_every", "resume", "max_nonfinite_steps", "progress", "max_time",
                             "max_student_updates", "max_images")}
FREE_SECTIONS = ("sample", "log")


@dataclass
class Change:
    key: str
    old: Any
    new: Any
    #: why it needs the user's permission (None: it does not)
    needs_permission: Optional[str] = None

    def describe(self) -> str:
        def show(v):
            return "(not set)" if v is _MISSING else json.dumps(v)

        why = f" ({self.needs_permission})" if self.needs_permission and self.needs_permission != "changed" else ""
        return f"{self.key}: {show(self.old)} -> {show(self.new)}{why}"

    def record(self) -> dict:
        d = asdict(self)
        for k in ("old", "new"):
            if d[k] is _MISSING:
                d[k] = None
        d["needs_permission"] = self.needs_permission is not None
        return d


class _Missing:
    def __repr__(self):
        return "(not set)"


_MISSING = _Missing()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"run": {"seed": 1}, "losses": [{"name": "a"}]}`` -> ``{"run.seed": 1, "losses[0].name": "a"}``;
    lists of plain values stay whole."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        out[f"{prefix}#len"] = len(obj)
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def compare(old: dict, new: dict, reached_step: int = 0) -> list[Change]:
    """Every difference between two resolved recipes (as dicts), each marked whether it needs permission."""
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va == vb:
            continue
        if key.endswith("#len"):
            key = key[:-4]
            va, vb = (f"{va} entries" if va is not _MISSING else va), (f"{vb} entries" if vb is not _MISSING else vb)
        free = key in FREE or key.split(".", 1)[0] in FREE_SECTIONS
        why = None if free else "changed"
        if key == "run.max_steps" and isinstance(vb, int) and vb < reached_step:
            why = f"below step {reached_step}, already reached"
        changes.append(Change(key, va, vb, why))
    return changes


def needing_permission(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.needs_permission is not None]
