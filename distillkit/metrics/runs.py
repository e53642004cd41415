"""What a run folder says about itself, for ``eval`` and ``compare``: method, budget, where results go.

The training budget is read from ``metrics.jsonl``: the engine logs running totals as ``budget/<name>``
keys (student updates, critic updates, images seen, forward and backward passes, wall time), so the
last record that carries them is the run's budget. Nothing here loads a model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

#: budget keys shown first, in this order, when present (others follow alphabetically)
BUDGET_ORDER = ("student_updates", "critic_updates", "images_seen", "student_samples", "unet_forward_samples",
                "backward_passes", "wall_s")
BUDGET_LABELS = {"student_updates": "student updates", "critic_updates": "critic updates",
                 "images_seen": "images seen", "unet_forward_samples": "UNet forwards (samples)",
                 "backward_passes": "backward passes", "student_samples": "student samples",
                 "wall_s": "train time"}


def run_dir_of(path: str | Path) -> Optional[Path]:
    """The run folder a path belongs to (the path itself, a checkpoint's or an export's run), if any."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "recipe.toml").is_file():
            return candidate
    return None


def read_recipe(run_dir: Path) -> dict:
    import tomllib

    try:
        return tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def method_label(recipe: dict) -> str:
    """The losses a run trained with, e.g. ``add.adversarial + add.distill`` (disabled ones left out)."""
    names = [entry.get("name", "?") for entry in recipe.get("losses", []) if entry.get("enabled", True)]
    return " + ".join(names) or "?"


def read_budget(run_dir: Path) -> dict[str, float]:
    """The last ``budget/*`` totals in ``metrics.jsonl`` (empty when the engine logged none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    budget: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        found = {k[len("budget/"):]: v for k, v in record.items() if k.startswith("budget/")
                 and isinstance(v, (int, float))}
        if found:
            budget = found
    return budget


def ordered_budget(budget: dict[str, float]) -> list[tuple[str, float]]:
    first = [(k, budget[k]) for k in BUDGET_ORDER if k in budget]
    return first + sorted((k, v) for k, v in budget.items() if k not in BUDGET_ORDER)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "eval"


def results_path(target: str | Path, protocol_name: str) -> Path:
    """Where ``distillkit eval`` writes (and ``compare`` reads) the results of ``target`` under a protocol:
    ``<run>/eval/<protocol>.json`` for a run folder, ``<run>/eval/<protocol>-<final|step-N>.json`` for an
    export or a checkpoint of a run (checkpoint folders are the engine's; nothing is added to them), and
    ``<target>/eval/<protocol>.json`` for a folder outside any run."""
    target = Path(target)
    run = run_dir_of(target)
    if run is not None and run.resolve() != target.resolve():
        return run / "eval" / f"{slug(protocol_name)}-{slug(target.name)}.json"
    folder = target if target.is_dir() else target.parent
    return folder / "eval" / f"{slug(protocol_name)}.json"
