"""Small helpers shared by the core, its test fixtures and plugins (kept free of model imports)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run the body with the RNG seeded to ``seed``, then restore the caller's stream.

    Random initialisations (frozen feature nets, a random student, LoRA matrices, the tiny test models)
    must come out bit-identical in every process and in any test order, whatever was drawn before, and
    drawing them must not shift the random stream of the code around them. ``None`` runs the body
    unseeded, so a caller can make seeding optional without a second code path.

    The CPU generator is always forked and seeded; the current CUDA device's only when CUDA is already
    initialised. Forking every visible GPU (``fork_rng``'s default) would create a context on each from
    every process of a multi-GPU run, and ``torch.manual_seed`` would reseed devices it cannot restore.
    """
    if seed is None:
        yield
        return
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield
