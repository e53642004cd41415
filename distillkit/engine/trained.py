"""One record for anything the engine trains: the student and each critic.

A :class:`Trained` holds what an optimiser update needs — the role's own parameters (by checkpoint name),
its optimiser and LR schedule, its gradient clip, how often it is updated — so the student and every
critic go through the same update, checkpoint and resume code.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass
class Trained:
    """A trained role. ``kind`` is "student" or "critic"; ``name`` is "student" or the critic's id."""

    name: str
    kind: str
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float
    updates_per_step: int = 1
    #: some parameters are FSDP shards (``DTensor``): clipping and checkpoints gather across processes
    sharded: bool = False

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.params.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}


def make_optimizer(params: list[torch.nn.Parameter], cfg, field: str = "student.optim"
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam, or AdamW when ``weight_decay`` > 0, with a linear warm-up of ``warmup_steps`` updates;
    bitsandbytes' 8-bit versions with ``eight_bit`` (``field`` names the recipe table in its error)."""
    if getattr(cfg, "eight_bit", False):
        from distillkit.engine.memory import eight_bit_adam

        cls = eight_bit_adam(field, cfg.weight_decay)
    else:
        cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    opt = cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


@contextlib.contextmanager
def only_trainable(everything: Iterable[Trained], active: Iterable[Trained]) -> Iterator[None]:
    """Inside the block only the parameters of ``active`` require grad (among every trained role's);
    the previous flags are restored on exit, so blocks nest. Frozen networks are never touched: their
    flags are False throughout and gradients still flow *through* them to whatever is trainable."""
    keep = {id(p) for t in active for p in t.parameters}
    params = [p for t in everything for p in t.parameters]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def average_gradients(trained: Trained, accelerator) -> int:
    """Average this role's gradients over processes (a no-op with one); returns the collectives issued.

    Fused into buckets (:func:`distillkit.engine.distributed.bucketed_all_reduce`). Which parameters have
    no gradient is structural (the same losses run on every rank), so every process packs the same
    buckets and issues the same collectives.
    """
    if accelerator.num_processes == 1:
        return 0
    from distillkit.engine.distributed import bucketed_all_reduce

    return bucketed_all_reduce(trained.parameters)


def apply_update(trained: Trained, accelerator) -> tuple[bool, float]:
    """Unscale (fp16), clip, step the optimiser and LR schedule; skip the update if the norm is not finite.

    Returns (applied, gradient norm before clipping)."""
    opt = trained.optimizer
    scaler = getattr(accelerator, "scaler", None)  # fp16: unscale before clipping, so the norm is the true one
    if scaler is not None:
        scaler.unscale_(getattr(opt, "optimizer", opt))
    params = trained.parameters
    if trained.sharded:  # FSDP shards: the norm needs the other processes' shards
        from distillkit.engine.distributed import clip_gradients

        norm = clip_gradients(params, trained.grad_clip)
    elif trained.grad_clip:
        norm = float(torch.nn.utils.clip_grad_norm_(params, trained.grad_clip))
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
    trained.scheduler.step()
    opt.zero_grad(set_to_none=True)
    return True, norm
