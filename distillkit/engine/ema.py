"""Exponential moving average of the student's trainable weights.

Kept in float32 beside the live weights; ``swapped_in`` temporarily puts the average into the model
(for sample grids and the final export) and restores the live weights afterwards.
"""

from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def reset(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].copy_(p.detach().float())

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
