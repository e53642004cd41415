"""Gradient averaging across processes: a few large all-reduces per phase instead of one per tensor.

Why not ``DistributedDataParallel``: a step trains different roles in different phases (the critics,
then the student), LoRA roles are adapters on one shared frozen UNet, and the frozen networks (teacher,
VAE, text encoders, feature networks) must never be wrapped for gradient sync. DDP ties the sync to a
wrapped module's backward and to the parameters that required grad when it was built; here each phase
makes only its own roles trainable, so after the phase's backward pass(es) exactly those gradients are
averaged, and nothing else is ever touched.

What DDP does that matters for speed is kept: gradients are packed into flat buckets of about
``BUCKET_MB`` and each bucket is one asynchronous all-reduce (the next bucket is packed while the
previous one is on the wire), so an SDXL UNet's ~1,700 gradient tensors take ~400 collectives of
25 MB, not 1,700 small ones whose fixed latency dominates. Gradients of parameters sharded by FSDP
(``DTensor``) are skipped: FSDP has already reduce-scattered them in the backward pass.

``per_tensor_all_reduce`` is the former one-collective-per-tensor method, kept as the baseline that
``benchmarks/grad_sync.py`` measures the buckets against.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

#: bucket size for the fused all-reduce (DDP's default is 25 MB as well)
BUCKET_MB = 25.0


def is_sharded(t: torch.Tensor) -> bool:
    """True for an FSDP2-sharded parameter or gradient (a ``DTensor``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def buckets(grads: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive gradients grouped by (device, dtype), each group cut into runs of at most
    ``bucket_bytes`` (a single larger tensor is a bucket of its own). The order is the parameters'
    order, which is the same on every process, so every process issues the same collectives."""
    by_kind: dict[tuple, list[list[torch.Tensor]]] = defaultdict(lambda: [[]])
    size: dict[tuple, int] = defaultdict(int)
    for g in grads:
        kind = (g.device, g.dtype)
        nbytes = g.numel() * g.element_size()
        if by_kind[kind][-1] and size[kind] + nbytes > bucket_bytes:
            by_kind[kind].append([])
            size[kind] = 0
        by_kind[kind][-1].append(g)
        size[kind] += nbytes
    return [b for runs in by_kind.values() for b in runs if b]


def bucketed_all_reduce(params: Iterable[torch.nn.Parameter], bucket_mb: float = BUCKET_MB,
                        group=None) -> int:
    """Average the (replicated) gradients of ``params`` over all processes in place; returns the number
    of collectives issued. At most two buckets are packed at a time, so the extra memory is two buckets.
    """
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = dist.get_world_size(group)
    grads = [p.grad for p in params if p.grad is not None and not is_sharded(p.grad)]
    if world == 1 or not grads:
        return 0
    pending: list[tuple] = []

    def finish(item):
        work, flat, members = item
        work.wait()
        flat.div_(world)
        for g, synced in zip(members, _unflatten_dense_tensors(flat, members)):
            g.copy_(synced)

    issued = 0
    for members in buckets(grads, int(bucket_mb * 2**20)):
        flat = _flatten_dense_tensors(members) if len(members) > 1 else members[0].detach().clone().view(-1)
        pending.append((dist.all_reduce(flat, group=group, async_op=True), flat, members))
        issued += 1
        if len(pending) > 1:  # keep one bucket in flight while the next is packed
            finish(pending.pop(0))
    for item in pending:
        finish(item)
    return issued


def per_tensor_all_reduce(params: Iterable[torch.nn.Parameter], accelerator) -> int:
    """The baseline: one blocking all-reduce per gradient tensor (what the engine did before buckets)."""
    n = 0
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
            n += 1
    return n


def total_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients of ``params``, sharded (FSDP) ones included: a sharded gradient's
    squared norm is summed over the processes holding its shards, a replicated one's counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    plain = [g for g in grads if not is_sharded(g)]
    sharded = [g.to_local() for g in grads if is_sharded(g)]
    device = grads[0].device
    total = torch.zeros((), device=device, dtype=torch.float32)
    if plain:
        total = total + torch.nn.utils.get_total_norm(plain).float().to(device) ** 2
    if sharded:
        local = torch.nn.utils.get_total_norm(sharded).float().to(device) ** 2
        if _world() > 1:
            import torch.distributed as dist

            dist.all_reduce(local)
        total = total + local
    return total.sqrt()


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` that also works when some gradients are FSDP shards; returns the norm."""
    norm = total_grad_norm(params)
    if max_norm and torch.isfinite(norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            if p.grad is not None:
                g = p.grad.to_local() if is_sharded(p.grad) else p.grad
                g.mul_(coef.to(g.device, g.dtype))
    return float(norm)


def any_sharded(params: Iterable[torch.nn.Parameter]) -> bool:
    return any(is_sharded(p) for p in params)
