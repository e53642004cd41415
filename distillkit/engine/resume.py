"""Choosing the checkpoint to resume from: the newest one that can be trusted, and why others were not.

Each candidate, newest first, must pass three checks before any value is copied into the model: its
files are the ones written (:func:`distillkit.checkpoint.verify_checkpoint`: sizes, hashes, the step in
``state.json`` equal to the folder's), it was written with the settings of this recipe (the copy of the
recipe inside it; :mod:`.changes`), and every tensor fits the roles just built (:func:`.state.check_state`).
A candidate that fails is skipped with a warning naming it and the reason, and the next older one is
tried. An explicitly named checkpoint (``run.resume = "<path>"``) has no fallback: it is used or refused.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distillkit import checkpoint as fmt
from distillkit.engine.changes import compare, needing_permission
from distillkit.engine.state import check_state
from distillkit.errors import RunFolderError

log = logging.getLogger("distillkit")


@dataclass
class Resumed:
    path: Optional[Path] = None
    step: int = 0
    #: checkpoints that were skipped, with the reason (newest first)
    rejected: list[tuple[Path, str]] = field(default_factory=list)


def settings_problem(path: Path, recipe_text: str) -> Optional[str]:
    """Whether the checkpoint was written with settings that need permission to change (see :mod:`.changes`)."""
    f = Path(path) / fmt.RECIPE
    if not f.is_file():
        return None  # written before checkpoints kept their recipe: the folder's recipe.toml was compared
    try:
        changes = needing_permission(compare(tomllib.loads(f.read_text()), tomllib.loads(recipe_text)))
    except tomllib.TOMLDecodeError as exc:
        return f"its {fmt.RECIPE} is unreadable ({exc})"
    if changes:
        return "written with other settings: " + "; ".join(c.describe() for c in changes[:5])
    return None


def problem(engine, path: Path, recipe_text: str, allow_changes: bool) -> Optional[str]:
    """Why ``path`` cannot be resumed by ``engine``, or None."""
    return (fmt.verify_checkpoint(path)
            or (None if allow_changes else settings_problem(path, recipe_text))
            or check_state(path, engine.trained, engine.critics, engine.student, engine.ema))


def find_and_load(engine, recipe_text: str, allow_changes: bool) -> Resumed:
    """Load the checkpoint ``run.resume`` asks for into ``engine``; writes nothing to the run folder."""
    mode = engine.recipe.run.resume
    root = engine.folder.checkpoints.root
    if mode == "never":
        return Resumed()
    if mode != "auto":
        path = Path(mode)
        if not path.is_dir():
            raise RunFolderError(f"run.resume: checkpoint {path} does not exist; give a checkpoints/step-* "
                                 f"folder, or 'auto' to take the newest in the run folder")
        why = problem(engine, path, recipe_text, allow_changes)
        if why:
            raise RunFolderError(f"run.resume: checkpoint {path} cannot be used: {why}. Nothing was changed; name "
                                 f"another checkpoint, or use run.resume = 'auto'.")
        engine.load_checkpoint(path, verified=True)
        return Resumed(path, engine.global_step)
    rejected: list[tuple[Path, str]] = []
    for _, path in reversed(fmt.list_checkpoints(root)):
        why = problem(engine, path, recipe_text, allow_changes)
        if why:
            log.warning("checkpoint %s cannot be used: %s; trying the one before it", path, why)
            rejected.append((path, why))
            continue
        engine.load_checkpoint(path, verified=True)
        if rejected:
            log.warning("resumed from %s (step %d) instead of the newest checkpoint %s", path, engine.global_step,
                        rejected[0][0].name)
        return Resumed(path, engine.global_step, rejected)
    if rejected:
        listing = "\n".join(f"  - {p.name}: {why}" for p, why in rejected)
        settings = any(why.startswith("written with other settings") for _, why in rejected)
        raise RunFolderError(
            f"none of the {len(rejected)} checkpoints in {root} can be used:\n{listing}\nNothing was changed. Move "
            f"them out of the folder to start afresh" + (", or pass --allow-changes to resume with the new settings"
                                                          if settings else "") + ".")
    return Resumed()
