"""One optimisation step, top to bottom.

1. The step's micro-batches (a pure function of the step number, so resume is exact), prompts encoded.
2. The student's sample, made when a loss first reads it: with ``train.generator_sample = "shared"``
   one sample per micro-batch serves both phases (detached in the critic phase); with ``"fresh"`` the
   generator phase draws its own.
3. The critic phase: every critic trains at once on the summed, ``critic_weight``-ed ``critic_loss`` of
   the losses bound to it, each with its own optimiser (a critic with ``updates_per_step = u`` takes
   part in the first u rounds).
4. The generator phase (every ``generator_every``-th step): the summed, ``weight``-ed ``generator_loss``
   of every loss into the student's optimiser, then the EMA.

Each phase makes only its own parameters trainable; critics and the teacher stay differentiable
*through their inputs*. A non-finite loss or gradient skips that phase's update on every process.

Scale-out is exact by construction: a step's global batch is ``W·A`` micro-batches (W processes, A
accumulation steps), and micro-batch g's data, random draws and starting buffers depend on g alone (its
*shard*), never on which process or accumulation slot computes it. So W = 2, A = 1 computes what W = 1,
A = 2 does, up to float summation order, and a checkpoint written under N processes resumes under M.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from distillkit.engine.build import BoundLoss, Roles, seed_for
from distillkit.engine.distributed import is_sharded
from distillkit.engine.trained import Trained, apply_update, average_gradients, only_trainable
from distillkit.errors import PluginError
from distillkit.losses.base import LossOutput, Phase, StepContext
from distillkit.roles.student import StudentSample


@dataclass
class Batch:
    """One prepared micro-batch: prompts and their conditioning, real data if any, and a memo that the
    two phases of the step share (``ctx.cached(..., across_phases=True)``)."""

    prompts: list[str]
    cond: Any
    uncond: Any
    pixels: Optional[torch.Tensor] = None
    real_x0: Optional[torch.Tensor] = None
    memo: dict = field(default_factory=dict)
    #: index of this micro-batch in the step's global batch (``slot * world + rank``); None: the rank
    shard: Optional[int] = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class PhaseLoss:
    """The weighted total of one phase on one micro-batch (None: no loss had a term), its logged values,
    and the label of the first non-finite loss (then ``total`` is None)."""

    total: Optional[torch.Tensor]
    metrics: dict[str, float]
    bad: Optional[str] = None


class MeanMetrics(dict):
    """Metrics averaged over the times each key was added (micro-batches, critic rounds)."""

    def __init__(self):
        super().__init__()
        self._n: dict[str, int] = {}

    def add(self, key: str, value: float, weight: float = 1.0) -> None:
        self[key] = self.get(key, 0.0) + weight * float(value)
        self._n[key] = self._n.get(key, 0) + 1

    def merge(self, values: dict[str, float], weight: float = 1.0) -> None:
        for k, v in values.items():
            self.add(k, v, weight)

    def averaged(self) -> dict[str, float]:
        return {k: v / self._n[k] for k, v in self.items()}


class StepRunner:
    """Runs steps on built roles. The engine owns one; its public methods are the engine's step API."""

    def __init__(self, roles: Roles, recipe, accelerator, data, counters: dict):
        self.roles, self.recipe, self.accelerator, self.data = roles, recipe, accelerator, data
        self.counters = counters

    # -- randomness ----------------------------------------------------------------------------
    def generator(self, step: int, *purpose, shared: bool = False, shard: Optional[int] = None) -> torch.Generator:
        """A generator for one purpose of one step; ``shared`` ones draw the same on every process and
        micro-batch, the others are keyed by the micro-batch's ``shard`` (default: this process's rank)."""
        who = "all" if shared else (self.accelerator.process_index if shard is None else shard)
        return torch.Generator().manual_seed(seed_for(self.recipe.run.seed, step, who, *purpose))

    # -- data --------------------------------------------------------------------------------------
    def prepare(self, raw: dict) -> Batch:
        backbone, res = self.roles.backbone, self.recipe.data.resolution
        with torch.no_grad():
            b = Batch(list(raw["prompts"]), backbone.encode_prompts(raw["prompts"], res),
                      backbone.empty_conditioning(len(raw["prompts"]), res))
            if raw.get("pixels") is not None:
                b.pixels = raw["pixels"].to(self.accelerator.device)
                b.real_x0 = backbone.encode_images(b.pixels)
        return b

    def student_sample(self, step: int, batch: Batch, grad: bool, purpose: str) -> StudentSample:
        """The student's output on ``batch`` for this step (with its graph when ``grad``)."""
        r, acc = self.recipe, self.accelerator
        shape = self.roles.backbone.sample_shape(len(batch), r.data.resolution)
        with only_trainable(self.roles.trained.values(), [self.roles.trained["student"]]), \
                torch.set_grad_enabled(grad), acc.autocast():
            return self.roles.student.training_sample(
                r.student.input, batch.cond, shape, self.generator(step, "student", purpose, shard=batch.shard),
                real_x0=batch.real_x0, device=acc.device, dtype=torch.float32,
                # one few-step index k per step: for every process, micro-batch and phase (SiD's code draws
                # one k per iteration, also when the generator phase draws a fresh sample)
                shared_generator=self.generator(step, "student", "k", shared=True))

    # -- losses --------------------------------------------------------------------------------------
    def context(self, phase: Phase, step: int, batch: Batch, sample: Callable[[], StudentSample], bl: BoundLoss,
                purpose: str, memo: dict, updating: frozenset[str] = frozenset()) -> StepContext:
        """A loss's view of one phase on one micro-batch."""
        roles = self.roles
        critics = {role: roles.critics[cid] for role, cid in bl.critic_ids.items()}
        return StepContext(
            phase=phase, step=step, backbone=roles.backbone, teacher=roles.teacher, student=roles.student,
            prompts=batch.prompts, cond=batch.cond, uncond=batch.uncond, resolution=self.recipe.data.resolution,
            sample=sample, real_x0=batch.real_x0, real_pixels=batch.pixels, critics=critics,
            updating=frozenset(role for role, cid in bl.critic_ids.items() if cid in updating),
            generator=self.generator(step, phase.value, purpose, bl.label, shard=batch.shard), memo=memo,
            batch_memo=batch.memo)

    def phase_loss(self, phase: Phase, step: int, batch: Batch, sample: Callable[[], StudentSample],
                   losses: list[BoundLoss], purpose: str, updating: frozenset[str] = frozenset()) -> PhaseLoss:
        """Evaluate ``losses`` for one phase on one micro-batch: their weighted sum and logged values.

        Touches no ``requires_grad`` flag and runs no backward: the step (and the contract suite) decide
        what is trainable around it. Generator-phase terms are logged as ``loss/<loss>/<term>`` with the
        loss's value as ``generator/<loss>``; critic-phase ones as ``critic/<loss>/<term>`` and
        ``critic/<loss>``."""
        memo: dict = {}  # shared by this phase's losses: e.g. the student decoded once, not per loss
        gen = phase is Phase.GENERATOR
        metrics: dict[str, float] = {}
        total = None
        for bl in losses:
            ctx = self.context(phase, step, batch, sample, bl, purpose, memo, updating)
            with self.accelerator.autocast():
                out = bl.loss.generator_loss(ctx) if gen else bl.loss.critic_loss(ctx)
            if out is None:
                continue
            value = _checked_total(out, bl.label, phase)
            for term, v in out.terms.items():
                metrics[f"{'loss' if gen else 'critic'}/{bl.label}/{term}"] = float(torch.as_tensor(v).detach().float())
            metrics[f"{'generator' if gen else 'critic'}/{bl.label}"] = float(value.detach())
            if not torch.isfinite(value.detach()):
                return PhaseLoss(None, metrics, f"{phase.value}/{bl.label}")
            weight = bl.entry.weight_at(step) if gen else bl.entry.critic_weight_at(step)
            total = value * weight if total is None else total + value * weight
        return PhaseLoss(total, metrics)

    # -- one update of one phase -------------------------------------------------------------------
    def any_process(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process: every rank must take the same skip/abort decision,
        or the next gradient all-reduce would wait forever for the rank that skipped."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def update(self, phase: Phase, step: int, active: list[Trained], losses: list[BoundLoss], micro: list[Batch],
               sample_for: Callable[[int], Callable[[], StudentSample]], metrics: MeanMetrics, purpose: str,
               updating: frozenset[str] = frozenset()) -> Optional[str]:
        """One optimiser update of the ``active`` roles over all micro-batches. Returns the bad term, if any."""
        n, bad, produced = len(micro), None, False
        buffers = _BufferSnapshot(self.roles) if n > 1 else None
        for j, batch in enumerate(micro):
            if j and buffers is not None:  # each micro-batch starts from the buffers a process would have
                buffers.restore()
            result = self.phase_loss(phase, step, batch, sample_for(j), losses, purpose, updating)
            metrics.merge(result.metrics)
            bad = result.bad
            if bad:
                break
            if result.total is None:
                continue
            produced = True
            self.accelerator.backward(result.total / n)
            self.counters["backward_passes"] += 1
        if self.any_process(bad is not None):
            for t in active:
                t.optimizer.zero_grad(set_to_none=True)
            return bad or f"{phase.value} (non-finite on another process)"
        if not produced:
            for t in active:
                t.optimizer.zero_grad(set_to_none=True)
            return None
        for t in active:
            if not t.sharded or any(not is_sharded(p) for p in t.parameters):
                average_gradients(t, self.accelerator)
            ok, norm = apply_update(t, self.accelerator)
            metrics.add(f"grad_norm/{t.name}", norm)
            if not ok:
                bad = bad or f"grad_norm/{t.name}"
            elif t.kind == "critic":
                self.counters.setdefault("critic_updates", {}).setdefault(t.name, 0)
                self.counters["critic_updates"][t.name] += 1
            else:
                self.counters["student_updates"] += 1
        return bad

    # -- the step -------------------------------------------------------------------------------------
    def run(self, step: int, batch: Optional[dict] = None, ema=None) -> dict:
        """Run optimisation step ``step`` (0-based) and return its metrics (means over micro-batches)."""
        r = self.recipe
        t0 = time.perf_counter()
        n = 1 if batch is not None else r.train.gradient_accumulation_steps
        raw = [batch] if batch is not None else [self.data.batch(step * n + j) for j in range(n)]
        micro = [self.prepare(b) for b in raw]
        for j, b in enumerate(micro):  # micro-batch j of rank r is global micro-batch j * world + r
            b.shard = j * self.accelerator.num_processes + self.accelerator.process_index
        train_gen = step % r.train.generator_every == 0
        samples = _SampleCache(self, step, micro, grad_first=train_gen, shared=r.train.generator_sample == "shared")
        metrics = MeanMetrics()
        bad: list[str] = []

        def critic_phase():
            bad.extend(self._critic_rounds(step, micro, samples, metrics))

        def generator_phase():
            if not train_gen:
                return
            student = self.roles.trained["student"]
            losses = [bl for bl in self.roles.losses if type(bl.loss).has_generator_term()]
            with only_trainable(self.roles.trained.values(), [student]):
                term = self.update(Phase.GENERATOR, step, [student], losses, micro, samples.generator, metrics,
                                   "generator")
            if term:
                bad.append(term)
            elif ema is not None:
                ema.reset() if step + 1 <= r.student.ema.start_step else ema.update()

        for phase in ((critic_phase, generator_phase) if r.train.critic_first else (generator_phase, critic_phase)):
            phase()
        out: dict[str, Any] = {"step": step + 1, **metrics.averaged()}
        if train_gen and not any(b.startswith("generator") or b == "grad_norm/student" for b in bad):
            out["generator/total"] = sum(out[f"generator/{bl.label}"] * bl.entry.weight_at(step)
                                         for bl in self.roles.losses if f"generator/{bl.label}" in out)
        out["lr/student"] = self.roles.trained["student"].scheduler.get_last_lr()[0]
        self.counters["images_seen"] += sum(len(b) for b in micro) * self.accelerator.num_processes
        out["time/step_s"] = time.perf_counter() - t0
        if bad:
            out["nonfinite"] = bad[0]
        return out

    def _critic_rounds(self, step: int, micro: list[Batch], samples: "_SampleCache", metrics: MeanMetrics) -> list[str]:
        critics = [t for t in self.roles.trained.values() if t.kind == "critic"]
        bad = []
        for u in range(max((t.updates_per_step for t in critics), default=0)):
            active = [t for t in critics if t.updates_per_step > u]
            ids = frozenset(t.name for t in active)
            losses = [bl for bl in self.roles.losses if bl.has_critic_term and ids & set(bl.critic_ids.values())]
            if not losses:
                continue
            with only_trainable(self.roles.trained.values(), active):
                term = self.update(Phase.CRITIC, step, active, losses, micro, samples.critic, metrics,
                                   f"critic/{u}", ids)
            if term:
                bad.append(term)
        return bad


class _BufferSnapshot:
    """Buffers of every trained role (spectral-norm power-iteration vectors, running statistics) as they
    were before a phase's first micro-batch. Restoring them before each later micro-batch makes gradient
    accumulation compute what separate processes compute: each of W processes starts its micro-batch
    from the same buffers, so accumulating W micro-batches on one process must too. The last
    micro-batch's buffers are kept, as a process keeps its own."""

    def __init__(self, roles: Roles):
        seen: set[int] = set()
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        modules = [roles.student.unet.module, *roles.critics.values()]
        for m in modules:
            for b in m.buffers():
                if id(b) not in seen and b.is_floating_point():
                    seen.add(id(b))
                    self.saved.append((b, b.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in self.saved:
            live.copy_(saved)


class _SampleCache:
    """Student samples of one step, made on first use and shared as the sample policy says.

    ``shared``: one sample per micro-batch for both phases. With one micro-batch it keeps the graph (when
    the generator trains this step) so the generator phase reuses it; with several, only detached values
    are kept (no graph is held across micro-batches) and the generator phase recomputes the graph from
    the same seeds, which gives the same values as long as the student has not been updated in between.
    ``fresh``: the critic phase's sample (no graph) and the generator phase's are independent draws.
    """

    def __init__(self, runner: StepRunner, step: int, micro: list[Batch], grad_first: bool, shared: bool):
        self.runner, self.step, self.micro, self.shared = runner, step, micro, shared
        self.keep_graph = grad_first and len(micro) == 1
        self.made: dict[tuple[int, str], tuple[StudentSample, bool]] = {}

    def _get(self, j: int, purpose: str, grad: bool) -> StudentSample:
        hit = self.made.get((j, purpose))
        if hit is not None and (hit[1] or not grad):
            return hit[0]
        s = self.runner.student_sample(self.step, self.micro[j], grad, purpose)
        self.runner.counters["student_samples"] += len(self.micro[j])
        if hit is None:
            self.made[(j, purpose)] = (s, grad) if (grad == self.keep_graph or not grad) else (s.detached(), False)
        return s

    def critic(self, j: int) -> Callable[[], StudentSample]:
        purpose = "shared" if self.shared else "critic"
        return lambda: self._get(j, purpose, grad=self.shared and self.keep_graph).detached()

    def generator(self, j: int) -> Callable[[], StudentSample]:
        purpose = "shared" if self.shared else "generator"
        return lambda: self._get(j, purpose, grad=True)


def _checked_total(out, label: str, phase: Phase) -> torch.Tensor:
    if not isinstance(out, LossOutput):
        raise PluginError(f"loss {label!r} returned {type(out).__name__} from its {phase.value} phase; "
                              f"expected distillkit.LossOutput(total, terms)")
    total = torch.as_tensor(out.total)
    if total.dim() != 0:
        raise PluginError(f"loss {label!r} returned a total of shape {tuple(total.shape)} from its {phase.value} "
                              f"phase; it must be a scalar (reduce it, e.g. with .mean())")
    return total.float()
