"""The training engine: build every role from a resolved recipe, step, checkpoint, sample, export.

:meth:`Engine.step` is one whole training step — the critic and generator phases (:mod:`.step`), the
metrics line, the runtime hooks, and the periodic checkpoint and sample grid — so a program that drives
its own loop gets exactly what :meth:`Engine.fit` does, which only loops and exports at the end.
Accelerate owns devices, mixed precision and processes; another program may pass its own ``Accelerator``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch

from distillkit import checkpoint as fmt
from distillkit.engine import start
from distillkit.engine.budget import COUNTERS, count_unet_passes, limit_reached, new_counters, spent
from distillkit.engine.build import build_roles
from distillkit.engine.memory import apply_savers, make_ema
from distillkit.engine.outputs import write_samples
from distillkit.engine.progress import StepProgress
from distillkit.engine.rundir import RunFolder
from distillkit.engine.sharding import consolidated, plain_student
from distillkit.engine.state import read_state, restore_counters, write_state
from distillkit.engine.step import Batch, PhaseLoss, StepRunner
from distillkit.engine.trained import only_trainable
from distillkit.errors import DistillkitError, ModelLoadError, NonFiniteLossError, RecipeError, RunFolderError
from distillkit.files import give_ordinary_mode, writing
from distillkit.losses.base import Phase

log = logging.getLogger("distillkit")

class Engine:
    """Distillation engine. Build with :meth:`from_recipe`, then :meth:`fit` or drive :meth:`step`."""

    def __init__(self, resolved, *, accelerator=None, plugin_manager=None, output_dir: str | Path | None = None,
                 callbacks: tuple = (), allow_changes: bool = False):
        self.resolved = resolved
        self.allow_changes = allow_changes  # resume despite changed settings, recorded (see .changes)
        self.recipe = resolved.recipe
        self._accelerator = accelerator
        if plugin_manager is None:
            from distillkit.plugins import make_plugin_manager

            plugin_manager = make_plugin_manager()[0]
        self.pm = plugin_manager
        for cb in callbacks:
            self.add_callback(cb)
        self.output_dir = Path(output_dir) if output_dir is not None else self.recipe.output_path()
        self.folder = RunFolder(self.output_dir, self.recipe.run.keep_checkpoints)
        self.global_step = 0
        self.counters: dict[str, Any] = new_counters()
        self._nonfinite_streak = 0
        self._stop_requested = False
        self._is_setup = False

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe, overrides=(), registry=None, base_dir=None, **kwargs) -> "Engine":
        """Build from a recipe path, a dict, or an already loaded ``ResolvedRecipe`` (``overrides`` as for
        ``--set a.b=c``; ``base_dir``: where relative paths of a dict recipe are taken from)."""
        from distillkit.recipe import load_recipe
        from distillkit.registry import Registry

        if registry is None:
            registry = Registry.discover()
        kwargs.setdefault("plugin_manager", registry.pm)
        if hasattr(recipe, "recipe") and hasattr(recipe, "backbone_cls"):  # a ResolvedRecipe
            return cls(recipe, **kwargs)
        return cls(load_recipe(recipe, overrides, registry=registry, base_dir=base_dir), **kwargs)

    def add_callback(self, obj) -> None:
        """Register an object whose ``@distillkit.hookimpl`` methods receive this engine's runtime hooks."""
        self.pm.register(obj)

    @property
    def accelerator(self):
        if self._accelerator is None:
            from accelerate import Accelerator

            t = self.recipe.train
            self._accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=(t.device == "cpu"))
        return self._accelerator

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> "Engine":
        """Load and build every role, restore the latest checkpoint (``run.resume``), write the run files.
        A set-up that fails releases the run folder and has written nothing into it."""
        if self._is_setup:
            return self
        try:
            return self._setup()
        except BaseException:
            self.folder.lock.release()
            raise

    def _setup(self) -> "Engine":
        r = self.recipe
        if self.resolved.warnings:
            raise ModelLoadError("missing files; nothing was loaded:\n" +
                                  "\n".join(f"  - {w}" for w in self.resolved.warnings))
        from distillkit.recipe import dump_resolved

        recipe_text = dump_resolved(self.resolved)
        acc = self.accelerator
        self._check_precision(acc)
        start.open_folder(self, recipe_text)  # lock, compare; writes nothing
        from distillkit.data import BatchSource

        self.data = BatchSource.from_config(r.data, seed=r.run.seed, rank=acc.process_index,
                                            world_size=acc.num_processes, base_dir=None)  # paths: relative to the cwd
        roles = build_roles(self.resolved, acc.device)
        self.backbone, self.teacher, self.student = roles.backbone, roles.teacher, roles.student
        self.critics, self.losses, self.trained = roles.critics, roles.losses, roles.trained
        self.savers = apply_savers(roles, r, acc.device, self.data)  # memory/speed keys (engine/memory.py)
        for t in self.trained.values():  # modules are placed, not wrapped: each phase averages its own gradients
            t.optimizer = acc.prepare(t.optimizer)
        self.ema = make_ema(self.student, r.student.ema)
        self.runner = StepRunner(roles, r, acc, self.data, self.counters)
        count_unet_passes(roles, self.counters)
        self._maybe_resume(recipe_text)
        self._shard(roles, acc)  # after the restore: checkpoints hold whole networks (engine/sharding.py)
        self._is_setup = True
        self.pm.hook.on_setup(engine=self)
        return self

    def _shard(self, roles, acc) -> None:
        from distillkit.engine import sharding

        mode = sharding.requested_mode(self.recipe, acc)
        problem = sharding.check(self.recipe, mode)
        if problem:
            raise RecipeError([problem], self.resolved.source)
        self.sharded = sharding.shard_roles(roles, self.trained, self.ema, acc, mode, acc.prepare)

    def _check_precision(self, acc) -> None:
        want = self.recipe.train.mixed_precision
        have = str(getattr(acc, "mixed_precision", "no"))
        if have != want:
            raise DistillkitError(f"train.mixed_precision is {want!r} but the Accelerator passed to the engine uses "
                                  f"{have!r}; make them agree (the recipe records what the run used)")

    # -- the step API (also what the contract suite drives) ---------------------------------------
    def prepare_batch(self, raw: dict) -> Batch:
        """A raw data batch (``{"prompts", "pixels"}``) with its conditioning and latents."""
        self.setup()
        return self.runner.prepare(raw)

    def draw_batch(self, index: int) -> Batch:
        """Data batch ``index`` of the run's stream, prepared."""
        self.setup()
        return self.runner.prepare(self.data.batch(index))

    def student_sample(self, batch: Batch, grad: bool = True, purpose: str = "probe"):
        """The student's training sample on ``batch`` at the current step (with its graph when ``grad``)."""
        self.setup()
        return self.runner.student_sample(self.global_step, batch, grad, purpose)

    def phase_loss(self, phase: Phase, batch: Batch, sample=None, losses=None, updating=None) -> PhaseLoss:
        """The weighted loss of one phase on ``batch``, without backward and without touching
        ``requires_grad`` (wrap it in :meth:`trainable` for the step's freezing). ``sample``: a
        StudentSample (detached for the critic phase) or None to draw one."""
        self.setup()
        gen = phase is Phase.GENERATOR
        if losses is None:
            losses = [bl for bl in self.losses
                      if (type(bl.loss).has_generator_term() if gen else bl.has_critic_term)]
        if sample is None:
            sample = self.student_sample(batch, grad=gen)
        made = sample if gen else sample.detached()
        if updating is None:
            updating = frozenset() if gen else frozenset(self.critics)
        return self.runner.phase_loss(phase, self.global_step, batch, lambda: made, losses, "probe",
                                      frozenset(updating))

    def trainable(self, *names: str):
        """Inside the block only the named trained roles ("student", critic ids) require grad."""
        self.setup()
        return only_trainable(self.trained.values(), [self.trained[n] for n in names])

    def step(self, batch: Optional[dict] = None) -> dict:
        """One training step (critic phases, then the generator phase), logged and with the runtime hooks,
        the periodic checkpoint and the periodic sample grid. Returns the step's metrics.

        With ``gradient_accumulation_steps = N`` a step consumes N micro-batches; an explicitly passed
        ``batch`` (``{"prompts": [...], "pixels": tensor or None}``) is one micro-batch."""
        self.setup()
        start.hold_folder(self)
        r = self.recipe.run
        metrics = self.runner.run(self.global_step, batch, self.ema)
        self.counters["wall_s"] += metrics["time/step_s"]
        self._check_finite(metrics.get("nonfinite"))
        self.global_step += 1
        step = self.global_step
        metrics.update(self.budget(prefixed=True))
        if self.data.dataset is not None:  # found as images load: grows during training for a lazy source
            metrics["data/skipped"] = sum(self.data.dataset.skipped.values())
        if self.is_main and (step % r.log_every == 0 or step == r.max_steps):
            self.folder.metrics.write(metrics)
            self.trackers.log(metrics, step)
        self.pm.hook.on_step_end(engine=self, step=step, metrics=metrics)
        if step % r.checkpoint_every == 0:
            self.save_checkpoint()
        if r.sample_every and step % r.sample_every == 0:
            self.write_samples()
        return metrics

    def budget(self, prefixed: bool = False) -> dict[str, Any]:
        """What the run has spent so far: updates, images, passes, wall time (summed over resumes)."""
        return spent(self.counters, prefixed)

    def budget_reached(self) -> Optional[str]:
        """The first of ``run.max_time``/``max_student_updates``/``max_images`` that has been reached."""
        return limit_reached(self.recipe.run, self.counters)

    def _check_finite(self, bad: Optional[str]) -> None:
        if bad is None:
            self._nonfinite_streak = 0
            return
        self._nonfinite_streak += 1
        limit = self.recipe.run.max_nonfinite_steps
        if self.is_main:
            self.folder.metrics.write({"event": "nonfinite", "step": self.global_step + 1, "term": bad})
        log.warning("step %d: %s was not finite; the update was skipped", self.global_step + 1, bad)
        if self._nonfinite_streak >= limit:
            last = fmt.latest_checkpoint(self.folder.checkpoints.root)
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"{bad} was NaN/Inf for {limit} consecutive steps (step {self.global_step + 1}); the updates "
                f"were skipped and {keep}. Lower the learning rate, enable grad_clip, or check the data.")

    # -- fit -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint and return from :meth:`fit` ("interrupted").

        Safe to call from a signal handler: preemption (SIGTERM) and Ctrl-C use it, so the checkpoint
        always holds a whole step. A KeyboardInterrupt raised *inside* a step writes nothing (the step
        is half applied); the last periodic checkpoint then stays the latest.
        """
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def fit(self, max_steps: int | None = None, *, samples: bool = True, export: bool = True,
            progress: bool = False) -> str:
        """Call :meth:`step` until ``max_steps`` (default the recipe's) or a budget limit, then write the
        last sample grid (``samples``) and export the student to ``final/`` (``export``). ``progress``
        draws a progress bar (the CLI's; a library call is quiet by default).

        Returns "completed", or "interrupted" after :meth:`request_stop`."""
        self.setup()
        r = self.recipe.run
        end = max_steps or r.max_steps
        status = "completed"
        try:
            with StepProgress(r.name, end, self.global_step, self.is_main and progress) as bar:
                while self.global_step < end and not self.budget_reached():
                    metrics = self.step()
                    bar.advance(metrics)
                    if self._stop_requested:
                        if self.global_step % r.checkpoint_every:
                            self.save_checkpoint()
                        self._stop_requested = False  # consumed: a later fit() resumes normally
                        status = "interrupted"
                        return status
            reason = self.budget_reached()
            if reason:
                log.info("stopping at step %d: %s", self.global_step, reason)
            if self.global_step % r.checkpoint_every:
                self.save_checkpoint()
            if samples and r.sample_every and self.global_step % r.sample_every:
                self.write_samples()
            if export:
                self.save_final()
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            if self.is_main and self._is_setup:
                self.folder.metrics.write({"event": "end", "status": status, "step": self.global_step},
                                          required=status != "failed")
            self.pm.hook.on_run_end(engine=self, status=status)
            self.accelerator.wait_for_everyone()
            self.close()
        return status

    def close(self) -> None:
        """Finish the trackers, release the run folder (as :meth:`fit` does at its end; :meth:`step` retakes it)."""
        if getattr(self, "trackers", None) is not None:
            self.trackers.finish()
        self.folder.lock.release()

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        self.setup()
        self.accelerator.wait_for_everyone()
        trained, critics, ema = consolidated(self.trained, self.critics, self.ema)  # sharded: gathered by all
        if not self.is_main:
            return None
        start.hold_folder(self)
        info = {"step": self.global_step, "nonfinite_streak": self._nonfinite_streak, "counters": self.counters}
        if self.ema is not None:
            info["ema_updates"] = self.ema.updates
        scaler = getattr(self.accelerator, "scaler", None)
        path = self.folder.checkpoints.write(self.global_step, lambda tmp: write_state(
            tmp, trained, critics, ema, scaler, info, self._recipe_text))
        self.pm.hook.on_checkpoint(engine=self, step=self.global_step, path=path)
        return path

    def load_checkpoint(self, path: str | Path, verified: bool = False) -> None:
        """Restore a checkpoint, checked first unless ``verified``: a bad one changes nothing (RunFolderError)."""
        if not hasattr(self, "runner"):
            self.setup()
        why = None if verified else start.problem(self, Path(path), self._recipe_text, self.allow_changes)
        if why:
            raise RunFolderError(f"checkpoint {path} cannot be used: {why}")
        state = read_state(Path(path), self.trained, self.critics, self.student, self.ema,
                           getattr(self.accelerator, "scaler", None))
        restore_counters(self, state, COUNTERS + ("wall_s",))
        if self.ema is not None:  # checkpoints before the ramp-up existed: one EMA update per student update
            self.ema.updates = int(state.get("ema_updates", self.counters["student_updates"]))

    def _maybe_resume(self, recipe_text: str) -> None:
        """Resume as ``run.resume`` says, then (only then) write this start into the run folder."""
        start.resume_and_record(self, recipe_text)

    # -- samples and export --------------------------------------------------------------------
    @contextlib.contextmanager
    def _ema_weights(self, use: bool = True):
        if use and self.ema is not None:
            with self.ema.swapped_in():
                yield
        else:
            yield

    def generate(self, prompts: list[str], steps: int, seed: int, use_ema: bool = True) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] from the student in ``steps`` steps."""
        from distillkit.inference import sample_images

        self.setup()
        with self._ema_weights(use_ema):
            return sample_images(self.backbone, self.student, prompts, steps, seed, self.recipe.data.resolution,
                                 self.device)

    def write_samples(self) -> Path | None:
        """The sample grid of the current step (``samples/step-*.png``) and the loss curves (``metrics.png``)."""
        self.setup()
        if not self.is_main:
            return None
        start.hold_folder(self)
        return write_samples(self, self.folder, self.recipe.sample, self.global_step)

    def save_final(self) -> Path | None:
        """Export the student (EMA weights if kept) to ``final/`` (see :mod:`distillkit.export`)."""
        from distillkit.export import write_final

        self.setup()
        self.accelerator.wait_for_everyone()
        with self._ema_weights(True):
            student = plain_student(self.student, self.backbone)  # sharded: gathered by every process
            if not self.is_main:
                return None
            start.hold_folder(self)
            with writing("the exported student", self.folder.final):
                path = write_final(self.backbone, student, self.folder.final, base=self.recipe.model.pretrained,
                                   step=self.global_step, resolution=self.recipe.data.resolution)
            give_ordinary_mode(Path(path).rglob("*.safetensors"), Path(path))  # safetensors writes them 0600
        return path

