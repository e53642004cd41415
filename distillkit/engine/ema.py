"""Exponential moving average of the student's trainable weights.

Kept in float32 beside the live weights; ``swapped_in`` temporarily puts the average into the model
(for sample grids and the final export) and restores the live weights afterwards.

A fixed decay d keeps a share d^n of the *initial* weights after n updates (0.999 after 2,000 updates:
still 14 % teacher), so a short run's average is mostly its starting point. ``rampup`` r is EDM's
``ema_rampup_ratio`` (also used by SiD's code): the average's half-life, log(0.5)/log(d) updates, is capped
at r·n while that is shorter (n updates so far), so the average always covers about the last r of the run.
"""

from __future__ import annotations

import contextlib
import math

import torch


def ramped_decay(decay: float, rampup: float, updates: int) -> float:
    """The decay of the ``updates``-th update (counting from 1): ``decay``, or with ``rampup`` > 0 the decay
    whose half-life is min(half-life of ``decay``, rampup·(updates − 1)) updates — EDM's count of the images
    seen before the update, so the first update copies the live weights."""
    if rampup <= 0:
        return decay
    half_life = min(math.log(0.5) / math.log(decay), rampup * (updates - 1))
    return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float, rampup: float = 0.0):
        self.decay, self.rampup = decay, rampup
        self.updates = 0  # since the average (re)started; checkpointed as state.json's "ema_updates"
        self.params = named_params
        self.shadow = {n: self._as_shadow(p).clone() for n, p in named_params.items()}

    def _as_shadow(self, p: torch.Tensor) -> torch.Tensor:
        """A live weight as the average holds it (float32, on the weight's device)."""
        return p.detach().float()

    def next_decay(self) -> float:
        self.updates += 1
        return ramped_decay(self.decay, self.rampup, self.updates)

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.next_decay()
        for n, p in self.params.items():
            self.shadow[n].lerp_(self._as_shadow(p), weight)

    @torch.no_grad()
    def reset(self) -> None:
        self.updates = 0
        for n, p in self.params.items():
            self.shadow[n].copy_(self._as_shadow(p))

    @contextlib.contextmanager
    def swapped_in(self):
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])
