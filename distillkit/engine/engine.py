"""The training engine: builds every role from a resolved recipe and runs critic/generator phases.

One call to :meth:`Engine.step` is one optimisation step:

1. the batch for this step (a pure function of the step number, so resume is exact);
2. the student's sample x̂_θ — made once, with the graph when the generator trains this step, and
   shared by both phases (the critic phase sees it detached);
3. each critic's phase(s): the summed ``critic_loss`` of the losses bound to it, its own optimiser;
4. the generator phase: the summed, weighted ``generator_loss`` of every loss, the student's optimiser,
   then the EMA.

Each phase makes only its own parameters trainable (critics and the teacher stay differentiable
*through their inputs*). Every random draw of step k comes from generators seeded by
(run seed, k, rank, purpose), so a resumed run draws the same numbers as an uninterrupted one without
saving any RNG state. Accelerate owns devices, mixed precision and processes; another program may pass
its own ``Accelerator`` and drive :meth:`step` itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distillkit.engine.checkpoint import CheckpointWriter, latest_checkpoint, load_tree, save_tree
from distillkit.engine.ema import EMA
from distillkit.engine.outputs import MetricsLog, save_grid, steps_label
from distillkit.engine.plots import plot_metrics
from distillkit.errors import DistillkitError, NonFiniteLossError, RecipeError
from distillkit.losses.base import LossOutput, Phase, StepContext
from distillkit.models.loading import resolve_dtype
from distillkit.plugins import make_plugin_manager
from distillkit.roles.critic import BuildEnv
from distillkit.roles.student import Student
from distillkit.roles.teacher import Teacher
from distillkit.utils import seeded

# Keys of a recipe that may change between a run and its resumption without it being "another run".
_RESUMABLE_CHANGES = ("run", "sample")


@dataclass
class BoundCritic:
    id: str
    critic: Any  # the Critic module
    optimizer: Any
    scheduler: Any
    updates_per_step: int
    grad_clip: float | None
    losses: list = field(default_factory=list)  # ResolvedLoss entries that train this critic
    params: list = field(default_factory=list)


def _seed_for(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _optimizer(params, cfg):
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    opt = cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


def _is_finite(x) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x, dtype=torch.float32)).all())


class Engine:
    """Distillation engine. Build with :meth:`from_recipe`, then :meth:`fit` or drive :meth:`step`."""

    def __init__(self, resolved, *, accelerator=None, plugin_manager=None, output_dir: str | Path | None = None,
                 callbacks: tuple = ()):
        self.resolved = resolved
        self.recipe = resolved.recipe
        self._accelerator = accelerator
        self.pm = plugin_manager if plugin_manager is not None else make_plugin_manager()[0]
        for cb in callbacks:
            self.add_callback(cb)
        self.output_dir = Path(output_dir) if output_dir is not None else self.recipe.output_path()
        self.global_step = 0
        self._nonfinite_streak = 0
        self._stop_requested = False
        self._is_setup = False

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe, overrides=(), registry=None, **kwargs) -> "Engine":
        """Build from a recipe path or dict (``overrides`` as for ``--set a.b=c``)."""
        from distillkit.recipe.load import load_recipe

        if registry is None:
            from distillkit.registry import Registry

            pm, infos = make_plugin_manager()
            registry = Registry.from_manager(pm, infos)
            kwargs.setdefault("plugin_manager", pm)
        return cls(load_recipe(recipe, overrides, registry=registry), **kwargs)

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
        if self._is_setup:
            return self
        r = self.recipe
        self._check_assets()
        self._check_output_dir()
        acc = self.accelerator
        from distillkit.data import BatchSource

        self.data = BatchSource.from_config(r.data, seed=r.run.seed, rank=acc.process_index,
                                            world_size=acc.num_processes, base_dir=None)  # paths: relative to the cwd
        self.backbone = self.resolved.backbone_cls.from_pretrained(
            r.model.pretrained, dtype=resolve_dtype(r.model.dtype), revision=r.model.revision,
            variant=r.model.variant, device=acc.device)
        T = self.backbone.schedule.num_train_timesteps
        if max(r.student.timesteps) >= T:
            raise RecipeError([f"student.timesteps: {max(r.student.timesteps)} is beyond the teacher's "
                               f"{T} training timesteps; use values in [0, {T - 1}]"], self.resolved.source)
        self.teacher = Teacher(self.backbone, self.backbone.teacher_unet, r.teacher.guidance_scale)
        s = r.student
        self._check_resolution()
        self.student = Student.from_teacher(
            self.backbone, self.backbone.teacher_unet, s.timesteps, init=s.init,
            lora=s.lora.model_dump() if s.lora else None, zero_terminal_snr=s.zero_terminal_snr,
            first_input=s.first_input, renoise=s.renoise, seed=_seed_for(r.run.seed, "init", "student"))
        self.student_params = self.student.trainable_parameters()
        self.student_opt, self.student_sched = _optimizer(self.student_params, s.optim)
        self.ema = None
        if s.ema is not None:
            named = {n: p for n, p in self.student.unet.named_parameters() if p.requires_grad}
            self.ema = EMA(named, s.ema.decay)

        env = BuildEnv(self.backbone, self.teacher, self.student, r.data.resolution, acc.device)
        self.critics: dict[str, BoundCritic] = {}
        for rc in self.resolved.critics:
            with seeded(_seed_for(r.run.seed, "init", "critic", rc.id)):  # same start in every process
                critic = rc.cls.build(rc.config, env).to(acc.device)
            params = critic.trainable_parameters()
            if not params:
                raise DistillkitError(f"critic {rc.entry.name!r} ({rc.id}) has no trainable parameters")
            opt, sched = _optimizer(params, rc.entry.optim)
            self.critics[rc.id] = BoundCritic(rc.id, critic, acc.prepare(opt), sched, rc.entry.updates_per_step,
                                              rc.entry.optim.grad_clip, params=params)
        self.losses = [(rl, rl.cls(rl.config)) for rl in self.resolved.losses]
        names = [rl.entry.name for rl in self.resolved.losses]
        self._labels = {id(rl): rl.entry.name if names.count(rl.entry.name) == 1 else f"{rl.entry.name}[{i}]"
                        for i, rl in enumerate(self.resolved.losses)}
        for rl, _ in self.losses:
            if rl.critic_id is not None and rl.cls.has_critic_term():
                self.critics[rl.critic_id].losses.append(rl)

        # Modules are placed, not wrapped: with several processes each phase averages its own
        # gradients explicitly (see _apply), which keeps phase-wise freezing and non-forward critic
        # methods correct without DDP's unused-parameter bookkeeping.
        self.student_opt = acc.prepare(self.student_opt)

        self._write_run_files()
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl")
        self.checkpoints = CheckpointWriter(self.output_dir / "checkpoints", r.run.keep_checkpoints)
        self._maybe_resume()
        self._is_setup = True
        self.pm.hook.on_setup(engine=self)
        return self

    def _check_resolution(self) -> None:
        """A resolution the UNet cannot halve down to its bottleneck fails deep inside diffusers: say so here."""
        blocks = getattr(getattr(self.backbone.teacher_unet, "config", None), "block_out_channels", None)
        if not blocks:
            return
        factor = self.backbone.spatial_factor * 2 ** (len(blocks) - 1)
        res = self.recipe.data.resolution
        if res % factor:
            ok = max(factor, round(res / factor) * factor)
            raise RecipeError([f"data.resolution: {res} is not a multiple of {factor} ({self.backbone.family}: "
                               f"{self.backbone.spatial_factor}x VAE downsampling x {len(blocks) - 1} UNet "
                               f"downsamplings); use e.g. {ok}"], self.resolved.source)

    def _check_assets(self) -> None:
        problems = [w for w in self.resolved.warnings]
        if problems:
            raise DistillkitError("missing files; nothing was loaded:\n" + "\n".join(f"  - {p}" for p in problems))

    def _check_output_dir(self) -> None:
        """Refuse to mix two different runs in one folder (before anything is loaded or written)."""
        from distillkit.recipe.load import dump_recipe, read_toml

        out = self.output_dir
        existing = out / "recipe.toml"
        has_work = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
        has_work = has_work or (out / "final").exists()
        if not (existing.exists() and has_work):
            return
        old, new = read_toml(existing), tomllib.loads(dump_recipe(self.recipe))
        changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
        if changed:
            raise DistillkitError(
                f"{out} already holds a different run (recipe sections {changed} differ); nothing was "
                f"overwritten. Set run.output_dir (or run.name) to a new folder, or delete the old one.")

    def _write_run_files(self) -> None:
        from distillkit.recipe.load import dump_recipe

        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.toml").write_text(dump_recipe(self.recipe))
            (self.output_dir / "run.json").write_text(json.dumps(self._run_info(), indent=2))

    def _run_info(self) -> dict:
        import importlib.metadata as md

        versions = {}
        for dist in ("distillkit", "torch", "diffusers", "transformers", "accelerate", "peft"):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
        return {"argv": sys.argv, "python": platform.python_version(), "versions": versions,
                "plugins": sorted(name for name, _ in self.pm.list_name_plugin()),
                "source": str(self.resolved.source) if self.resolved.source else None}

    # -- randomness ----------------------------------------------------------------------------
    def _generator(self, *purpose) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(_seed_for(self.recipe.run.seed, self.global_step, self.accelerator.process_index, *purpose))
        return g

    # -- phases --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _trainable(self, params: list):
        """Only ``params`` require grad inside the block (among the student's and every critic's
        trainable parameters); the previous flags are restored on exit, so blocks nest."""
        everything = list(self.student_params)
        for bc in self.critics.values():
            everything += bc.params
        keep = {id(p) for p in params}
        before = [p.requires_grad for p in everything]
        for p in everything:
            p.requires_grad_(id(p) in keep)
        try:
            yield
        finally:
            for p, flag in zip(everything, before):
                p.requires_grad_(flag)

    def _context(self, phase: Phase, batch: dict, sample: tuple, critic=None, purpose: str = "",
                 memo: dict | None = None) -> StepContext:
        """A loss's view of one phase on one micro-batch; ``batch["memo"]`` outlives the phase."""
        x0, t, x_in = sample
        if phase is Phase.CRITIC:
            x0, x_in = x0.detach(), x_in.detach()
        return StepContext(
            phase=phase, step=self.global_step, backbone=self.backbone, teacher=self.teacher,
            student=self.student, prompts=batch["prompts"], cond=batch["cond"], uncond=batch["uncond"],
            resolution=self.recipe.data.resolution, student_x0=x0, student_t=t, student_input=x_in,
            real_x0=batch.get("real_x0"), real_pixels=batch.get("pixels"), critic=critic,
            generator=self._generator(phase.value, purpose), memo={} if memo is None else memo,
            batch_memo=batch.setdefault("memo", {}))

    def label(self, rl) -> str:
        """A loss entry's name in metrics and seeds: its qualified name, ``name[i]`` if it appears twice."""
        return self._labels[id(rl)]

    def _evaluate(self, phase: Phase, losses: list, ctx_for, metrics: dict, prefix: str, scale: float = 1.0):
        """Sum the weighted losses of one phase on one micro-batch; add ``scale`` × each value to metrics.

        Generator-phase terms are logged as ``loss/<loss>/<term>``, critic-phase ones as
        ``critic/<id>/<loss>/<term>``. Returns (total, name of the first non-finite loss or None)."""
        total = None
        for rl, loss in losses:
            ctx = ctx_for(rl)
            with self.accelerator.autocast():
                out = loss.generator_loss(ctx) if phase is Phase.GENERATOR else loss.critic_loss(ctx)
            if out is None:
                continue
            if not isinstance(out, LossOutput):
                raise DistillkitError(f"loss {rl.entry.name!r} returned {type(out).__name__} from its "
                                      f"{phase.value} phase; expected distillkit.LossOutput")
            name = self.label(rl)
            term_prefix = f"loss/{name}" if phase is Phase.GENERATOR else f"{prefix}/{name}"
            for term, value in out.terms.items():
                key = f"{term_prefix}/{term}"
                metrics[key] = metrics.get(key, 0.0) + scale * float(torch.as_tensor(value).detach().float())
            val = out.total.float()
            metrics[f"{prefix}/{name}"] = metrics.get(f"{prefix}/{name}", 0.0) + scale * float(val.detach())
            if not _is_finite(val.detach()):
                return None, f"{prefix}/{name}"
            weight = rl.entry.weight_at(self.global_step) if phase is Phase.GENERATOR else 1.0
            total = val * weight if total is None else total + val * weight
        return total, None

    def _any_process(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process: every rank must take the same skip/abort decision,
        or the next gradient all-reduce would wait forever for the rank that skipped."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def _apply(self, opt, sched, params, clip) -> tuple[bool, float]:
        """Average gradients across processes, clip, step; skip the update if the norm is not finite.

        Which parameters have no gradient is structural (the same losses run on every rank), so the
        all-reduce sequence is the same on every process."""
        acc = self.accelerator
        if acc.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(acc.reduce(p.grad, reduction="mean"))
        scaler = getattr(acc, "scaler", None)  # fp16: unscale before clipping, so the norm is the true one
        if scaler is not None:
            scaler.unscale_(getattr(opt, "optimizer", opt))
        if clip:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if not math.isfinite(norm):
            if scaler is not None:  # an fp16 overflow: the scaler skips the update and lowers its scale
                opt.step()
                opt.zero_grad(set_to_none=True)
                return True, norm
            opt.zero_grad(set_to_none=True)
            return False, norm
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return True, norm

    def _prepare_batch(self, batch: dict) -> dict:
        r = self.recipe
        b = dict(batch)
        with torch.no_grad():
            b["cond"] = self.backbone.encode_prompts(b["prompts"], r.data.resolution)
            b["uncond"] = self.backbone.empty_conditioning(len(b["prompts"]), r.data.resolution)
            if b.get("pixels") is not None:
                b["pixels"] = b["pixels"].to(self.device)
                b["real_x0"] = self.backbone.encode_images(b["pixels"])
        return b

    def _phase(self, phase: Phase, losses: list, micro: list, sample_for, critic, opt, sched, params, clip,
               metrics: dict, prefix: str, purpose: str, scale: float = 1.0) -> str | None:
        """One optimiser update of one phase over all micro-batches. Returns the bad term, if any."""
        n = len(micro)
        bad, produced = None, False
        for j, batch in enumerate(micro):
            memo: dict = {}  # shared by this phase's losses: the student is decoded once, not per loss
            ctx_for = (lambda rl, j=j, batch=batch, memo=memo: self._context(
                phase, batch, sample_for(j), critic(rl), f"{purpose}/{j}/{self.label(rl)}", memo))
            total, bad = self._evaluate(phase, losses, ctx_for, metrics, prefix, scale / n)
            if bad:
                break
            if total is None:
                continue
            produced = True
            self.accelerator.backward(total / n)
        if self._any_process(bad is not None):
            opt.zero_grad(set_to_none=True)
            return bad or f"{prefix} (non-finite on another process)"
        if not produced:
            opt.zero_grad(set_to_none=True)
            return None
        ok, norm = self._apply(opt, sched, params, clip)
        key = f"grad_norm/{prefix.split('/', 1)[-1] if phase is Phase.CRITIC else 'student'}"
        metrics[key] = metrics.get(key, 0.0) + scale * norm
        return None if ok else f"grad_norm/{prefix}"

    def step(self, batch: dict | None = None) -> dict:
        """Run one optimisation step (critic phases, then the generator phase) and return its metrics.

        With ``gradient_accumulation_steps = N`` a step consumes N micro-batches (data batches kN..kN+N−1);
        an explicitly passed ``batch`` is one micro-batch. Metrics are means over micro-batches and over a
        critic's updates within the step.
        """
        self.setup()
        r = self.recipe
        t0 = time.perf_counter()
        n = 1 if batch is not None else r.train.gradient_accumulation_steps
        raw = [batch] if batch is not None else [self.data.batch(self.global_step * n + j) for j in range(n)]
        micro = [self._prepare_batch(b) for b in raw]
        train_gen = self.global_step % r.train.generator_every == 0
        metrics: dict[str, Any] = {"step": self.global_step + 1}
        cache: dict[int, tuple] = {}

        def student_sample(j: int, grad: bool):
            """The student's output on micro-batch j, made once per step and shared by both phases.

            With one micro-batch it keeps the graph (when the generator trains this step) so the
            generator phase reuses it. With several, only detached values are kept (no graph is held
            across micro-batches) and the generator phase recomputes the graph from the same seeds,
            which gives the same values as long as the student has not been updated in between."""
            hit = cache.get(j)
            if hit is not None and (hit[1] or not grad):
                return hit[0]
            b = micro[j]
            shape = self.backbone.sample_shape(len(b["prompts"]), r.data.resolution)
            with self._trainable(self.student_params), torch.set_grad_enabled(grad), self.accelerator.autocast():
                out = self.student.training_sample(r.student.input, b["cond"], shape, self._generator("student", j),
                                                   real_x0=b.get("real_x0"), device=self.device,
                                                   dtype=torch.float32)
            if n == 1 or not grad:
                cache[j] = (out, grad)
            elif hit is None:
                cache[j] = ((out[0].detach(), out[1], out[2].detach()), False)
            return out

        bad: list[str] = []

        def critic_phases():
            for bc in self.critics.values():
                bound = [(rl, loss) for rl, loss in self.losses if rl in bc.losses]
                for u in range(bc.updates_per_step):
                    with self._trainable(bc.params):
                        term = self._phase(Phase.CRITIC, bound, micro,
                                           lambda j: student_sample(j, grad=train_gen and n == 1),
                                           lambda rl, bc=bc: bc.critic, bc.optimizer, bc.scheduler, bc.params,
                                           bc.grad_clip, metrics, f"critic/{bc.id}", f"{bc.id}/{u}",
                                           scale=1.0 / bc.updates_per_step)
                    if term:
                        bad.append(term)

        def generator_phase():
            with self._trainable(self.student_params):
                term = self._phase(Phase.GENERATOR, self.losses, micro, lambda j: student_sample(j, grad=True),
                                   lambda rl: self.critics[rl.critic_id].critic if rl.critic_id else None,
                                   self.student_opt, self.student_sched, self.student_params,
                                   r.student.optim.grad_clip, metrics, "generator", "generator")
            if term:
                bad.append(term)
                return
            metrics["generator/total"] = sum(
                metrics[f"generator/{self.label(rl)}"] * rl.entry.weight_at(self.global_step)
                for rl, _ in self.losses if f"generator/{self.label(rl)}" in metrics)
            if self.ema is not None:
                if self.global_step + 1 <= r.student.ema.start_step:
                    self.ema.reset()
                else:
                    self.ema.update()

        phases = [critic_phases, generator_phase] if r.train.critic_first else [generator_phase, critic_phases]
        for run_phase in phases:
            if run_phase is generator_phase and not train_gen:
                continue
            run_phase()
        metrics["lr/student"] = self.student_sched.get_last_lr()[0]
        metrics["time/step_s"] = time.perf_counter() - t0
        self._check_finite(bad[0] if bad else None, metrics)
        self.global_step += 1
        return metrics

    def _check_finite(self, bad: str | None, metrics: dict) -> None:
        if bad is None:
            self._nonfinite_streak = 0
            return
        self._nonfinite_streak += 1
        metrics["nonfinite"] = bad
        limit = self.recipe.run.max_nonfinite_steps
        if self.is_main:
            self.metrics.write({"event": "nonfinite", "step": self.global_step + 1, "term": bad})
        if self._nonfinite_streak >= limit:
            last = latest_checkpoint(self.output_dir / "checkpoints")
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

    def fit(self, max_steps: int | None = None) -> str:
        """Train to ``max_steps`` (default the recipe's), with checkpoints, samples and metrics.

        Returns "completed", or "interrupted" after :meth:`request_stop`.
        """
        self.setup()
        r = self.recipe.run
        end = max_steps or r.max_steps
        status = "completed"
        progress = _progress(self.is_main and r.progress)
        try:
            with progress:
                task = progress.add_task(f"[bold]{r.name}", total=end, completed=self.global_step)
                while self.global_step < end:
                    metrics = self.step()
                    step = self.global_step
                    if self.is_main and (step % r.log_every == 0 or step == end):
                        self.metrics.write(metrics)
                    self.pm.hook.on_step_end(engine=self, step=step, metrics=metrics)
                    gtot = metrics.get("generator/total")
                    loss = f" loss {gtot:.4g}" if gtot is not None else ""
                    progress.update(task, advance=1, description=f"[bold]{r.name}[/]{loss}")
                    if step % r.checkpoint_every == 0 or step == end or self._stop_requested:
                        self.save_checkpoint()
                    if self._stop_requested:
                        self._stop_requested = False  # consumed: a later fit() resumes normally
                        status = "interrupted"
                        return status
                    if r.sample_every and (step % r.sample_every == 0):
                        self.write_samples()
            if r.sample_every and self.global_step % r.sample_every != 0:
                self.write_samples()
            self.save_final()
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            if self.is_main and self._is_setup:
                self.metrics.write({"event": "end", "status": status, "step": self.global_step})
            self.pm.hook.on_run_end(engine=self, status=status)
            self.accelerator.wait_for_everyone()
        return status

    # -- checkpoints ---------------------------------------------------------------------------
    def _student_state(self) -> dict[str, torch.Tensor]:
        unet = self.student.unet
        trainable = {id(p) for p in self.student_params}
        return {n: p.detach() for n, p in unet.named_parameters() if id(p) in trainable}

    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        from safetensors.torch import save_file

        def write(tmp: Path):
            save_file({k: v.contiguous().cpu() for k, v in self._student_state().items()},
                      str(tmp / "student.safetensors"))
            save_tree(self.student_opt.state_dict(), tmp / "optim-student")
            save_tree(self.student_sched.state_dict(), tmp / "sched-student")
            if self.ema is not None:
                save_file({k: v.contiguous().cpu() for k, v in self.ema.state_dict().items()},
                          str(tmp / "ema.safetensors"))
            for bc in self.critics.values():
                save_file({k: v.contiguous().cpu() for k, v in bc.critic.trainable_state_dict().items()},
                          str(tmp / f"critic-{bc.id}.safetensors"))
                save_tree(bc.optimizer.state_dict(), tmp / f"optim-critic-{bc.id}")
                save_tree(bc.scheduler.state_dict(), tmp / f"sched-critic-{bc.id}")
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:  # fp16 loss scale: part of exact resume
                save_tree(scaler.state_dict(), tmp / "grad-scaler")
            (tmp / "state.json").write_text(json.dumps(
                {"step": self.global_step, "nonfinite_streak": self._nonfinite_streak}))

        path = self.checkpoints.write(self.global_step, write)
        self.pm.hook.on_checkpoint(engine=self, step=self.global_step, path=path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "COMPLETE").exists():
            raise DistillkitError(f"{path} is not a complete distillkit checkpoint (no COMPLETE marker)")
        _load_params(self.student.unet, load_file(str(path / "student.safetensors")), "student")
        self.student_opt.load_state_dict(load_tree(path / "optim-student"))
        self.student_sched.load_state_dict(load_tree(path / "sched-student"))
        if self.ema is not None:
            if (path / "ema.safetensors").exists():
                self.ema.load_state_dict(load_file(str(path / "ema.safetensors")))
            else:
                self.ema.reset()
        for bc in self.critics.values():
            f = path / f"critic-{bc.id}.safetensors"
            if not f.exists():
                raise DistillkitError(f"checkpoint {path} has no state for critic {bc.id!r}; was it written "
                                      f"by a recipe with different [[critics]]?")
            _load_params(bc.critic, load_file(str(f)), f"critic {bc.id}")
            bc.optimizer.load_state_dict(load_tree(path / f"optim-critic-{bc.id}"))
            bc.scheduler.load_state_dict(load_tree(path / f"sched-critic-{bc.id}"))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and (path / "grad-scaler.json").exists():
            scaler.load_state_dict(load_tree(path / "grad-scaler"))
        state = json.loads((path / "state.json").read_text())
        self.global_step = int(state["step"])
        self._nonfinite_streak = int(state.get("nonfinite_streak", 0))

    def _maybe_resume(self) -> None:
        mode = self.recipe.run.resume
        ckpt_root = self.output_dir / "checkpoints"
        if mode == "never":
            if latest_checkpoint(ckpt_root) is not None:
                raise DistillkitError(f"{ckpt_root} already has checkpoints and run.resume = 'never'; nothing "
                                      f"was overwritten. Use run.resume = 'auto' or a new run.output_dir.")
            return
        path = latest_checkpoint(ckpt_root) if mode == "auto" else Path(mode)
        if path is None:
            return
        if not path.exists():
            raise DistillkitError(f"run.resume: checkpoint {path} does not exist")
        self.load_checkpoint(path)
        if self.is_main:
            self.metrics.write({"event": "resume", "step": self.global_step, "checkpoint": str(path)})

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

        with self._ema_weights(use_ema):
            return sample_images(self.backbone, self.student, prompts, steps, seed, self.recipe.data.resolution,
                                 self.device)

    def write_samples(self) -> Path | None:
        if not self.is_main:
            return None
        s = self.recipe.sample
        images = torch.cat([self.generate(s.prompts, k, s.seed, s.use_ema) for k in s.steps])
        path = save_grid(images, self.output_dir / "samples" / f"step-{self.global_step:08d}.png",
                         ncols=len(s.prompts), row_labels=[steps_label(k) for k in s.steps], col_labels=s.prompts)
        self.pm.hook.on_samples(engine=self, step=self.global_step, images=images, path=path)
        plot_metrics(self.metrics.read(), self.output_dir / "metrics.png")
        return path

    def save_final(self) -> Path | None:
        """Write the student so the family's diffusers pipeline loads it (LoRA: ``load_lora_weights``)."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        out = self.output_dir / "final"
        with self._ema_weights(True):
            if self.student.is_lora:
                self.backbone.save_lora(self.student.unet, str(out))
            else:
                self.backbone.save_pipeline(self.student.unet, str(out), self.backbone.few_step_scheduler())
        meta = {"family": self.backbone.family, "timesteps": self.student.timesteps,
                "first_input": self.student.first_input, "renoise": self.student.renoise,
                "lora": self.student.is_lora, "base": self.recipe.model.pretrained, "step": self.global_step,
                "resolution": self.recipe.data.resolution}
        (out / "distillkit.json").write_text(json.dumps(meta, indent=2))
        return out


def _load_params(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    missing = [k for k in state if k not in own]
    if missing:
        raise DistillkitError(f"checkpoint {what} has {len(missing)} tensors this model lacks, e.g. {missing[:3]}: "
                              f"the recipe's model or LoRA settings differ from the run that wrote it")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)
