"""Classifier-free guidance in the diffusers convention, with explicit scales.

    ε̂ = ε_u + s (ε_c − ε_u)

s = 1 is the conditional branch alone, s = 0 the unconditional branch alone, s < 0 pushes *away* from
the prompt (SiD's Anti-CFG), s > 1 is ordinary guidance. DreamFusion's weight ω is s = 1 + ω. Because
the two weights (1 − s, s) sum to one and ε, v and x0 are affine in each other at fixed x_t, guiding any
of the three parameterisations gives the same x0 (docs/methods.md), so this works on raw outputs.
At s ∈ {0, 1} only one branch is evaluated, as the SiD code does: half the compute, and bit-identical
to a plain call.
"""

from __future__ import annotations

from typing import Callable

import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def guided(call: Callable, x_t: torch.Tensor, t: torch.Tensor, cond, uncond, scale: float) -> torch.Tensor:
    """Evaluate ``call(x, t, conditioning) -> Tensor`` with CFG scale ``scale``.

    ``cond`` and ``uncond`` are conditioning objects supporting ``type(c).cat([a, b])`` (see
    :class:`distillkit.models.Conditioning`). Both branches run as one batch of 2B.
    """
    scale = float(scale)
    if scale == 1.0:
        return call(x_t, t, cond)
    if scale == 0.0:
        return call(x_t, t, uncond)
    if uncond is None:
        raise ValueError(f"guidance scale {scale} needs an unconditional branch, but none was given")
    both = call(torch.cat([x_t, x_t]), torch.cat([t, t]), type(cond).cat([cond, uncond]))
    out_c, out_u = both.chunk(2)
    return cfg_combine(out_c, out_u, scale)
