"""How a run takes its run folder: lock and compare before anything loads, resume, and only then write.

:func:`open_folder` runs before any model is built: it takes the folder's lock (:mod:`.lock`), refuses a
recipe that differs from the folder's (:meth:`.rundir.RunFolder.check_start`) and a tracker whose package
is missing, all without writing. :func:`resume_and_record` runs once the roles are built: it loads the
newest checkpoint that passes every check (:mod:`.resume`), and only after that succeeded sets rejected
checkpoints aside, writes ``recipe.toml``, appends the start to ``run.json``, logs the start (with the
skipped images) and starts the trackers. A start that fails anywhere before leaves the folder as it was.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Optional

from distillkit.engine import resume
from distillkit.engine.rundir import start_entry
from distillkit.engine.tracking import Trackers, missing_trackers
from distillkit.errors import RunFolderError

log = logging.getLogger("distillkit")


def open_folder(engine, recipe_text: str) -> None:
    """Lock the run folder (main process) and refuse a start that would mix two runs; writes nothing."""
    engine._recipe_text = recipe_text
    if engine.is_main:
        engine.folder.lock.acquire()
    engine.folder.check_start(recipe_text, engine.recipe.run.resume, engine.allow_changes)
    report_to = engine.recipe.log.report_to
    if engine.is_main and report_to and missing_trackers(report_to):
        Trackers(engine.recipe.log, engine.recipe.run.name, engine.output_dir, {})  # raises the message


def hold_folder(engine) -> None:
    """Take the run folder again after :meth:`Engine.close` (a second ``fit()``), if no one moved it on."""
    if not engine.is_main or engine.folder.lock.held:
        return
    engine.folder.lock.acquire()
    reached = engine.folder.reached_step()
    if reached > engine.global_step:
        engine.folder.lock.release()
        raise RunFolderError(f"{engine.output_dir} has moved on to step {reached} since this engine (at step "
                             f"{engine.global_step}) last wrote to it; build a new Engine to resume from there")


def problem(engine, path: Path, recipe_text: str, allow_changes: bool) -> Optional[str]:
    return resume.problem(engine, path, recipe_text, allow_changes)


def resume_and_record(engine, recipe_text: str) -> None:
    """Resume as ``run.resume`` says, then (only then) write the start into the run folder."""
    found = resume.find_and_load(engine, recipe_text, engine.allow_changes)
    engine.accelerator.wait_for_everyone()  # every process has read its checkpoint before one is set aside
    data = engine.data.describe()
    if data.get("skipped_total"):
        log.warning("%d training images were skipped (%s); the list is in run.json", data["skipped_total"],
                    ", ".join(f"{n} {why}" for why, n in data["skipped"].items()))
    if found.path is not None:
        log.info("resumed from %s (step %d)", found.path, engine.global_step)
    engine.trackers = Trackers(None, "", engine.output_dir, {})
    if not engine.is_main:
        return
    folder = engine.folder
    folder.set_aside(found.rejected)
    folder.write_start(recipe_text, start_entry(
        engine.pm, engine.resolved.source, resumed_from=(found.path, found.step) if found.path else None,
        changes=folder.changes, rejected=found.rejected, data=data))
    allowed = [c for c in folder.changes if c.needs_permission]
    if allowed:
        log.warning("resuming with changed settings (allowed, recorded in run.json): %s",
                    "; ".join(c.describe() for c in allowed))
    event = {"event": "resume", "checkpoint": str(found.path)} if found.path else {"event": "start"}
    folder.metrics.write({**event, "step": engine.global_step, "skipped_images": data.get("skipped_total", 0)})
    engine.trackers = Trackers(engine.recipe.log, engine.recipe.run.name, engine.output_dir,
                               tomllib.loads(recipe_text))
