"""Conversions between ε-, v- and x0-parameterisations, and a prediction that knows its own.

With x_t = α x0 + σ ε and α² + σ² = 1 (docs/methods.md, notation):
    x0 = (x_t − σ ε)/α,   ε = (x_t − α x0)/σ,   v = α ε − σ x0,   x0 = α x_t − σ v,   ε = σ x_t + α v.
The v-formulas use α² + σ² = 1, which holds for every VP schedule but not after zero-terminal-SNR
overrides of the *input*: callers pass the schedule's own (α, σ), never the overridden ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t, x0, alpha, sigma):
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0, eps, alpha, sigma):
    return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
    return alpha * x_t - sigma * v


def eps_from_v(x_t, v, alpha, sigma):
    return sigma * x_t + alpha * v


def convert(output: torch.Tensor, source: str, target: str, x_t, alpha, sigma) -> torch.Tensor:
    """Re-express a network ``output`` given in parameterisation ``source`` as ``target``."""
    for kind in (source, target):
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")
    if source == target:
        return output
    if source == "epsilon":
        x0, eps = x0_from_eps(x_t, output, alpha, sigma), output
    elif source == "sample":
        x0, eps = output, eps_from_x0(x_t, output, alpha, sigma)
    else:
        x0, eps = x0_from_v(x_t, output, alpha, sigma), eps_from_v(x_t, output, alpha, sigma)
    if target == "sample":
        return x0
    if target == "epsilon":
        return eps
    return v_from_x0_eps(x0, eps, alpha, sigma)


@dataclass
class Prediction:
    """A network output tagged with its parameterisation and the (x_t, α, σ) it was made at.

    Methods ask for whichever form their maths is written in (``.x0``, ``.eps``, ``.v``) and never
    care whether the UNet was trained for ε or v.
    """

    output: torch.Tensor
    kind: str
    x_t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    def as_(self, target: str) -> torch.Tensor:
        return convert(self.output, self.kind, target, self.x_t, self.alpha, self.sigma)

    @property
    def x0(self) -> torch.Tensor:
        return self.as_("sample")

    @property
    def eps(self) -> torch.Tensor:
        return self.as_("epsilon")

    @property
    def v(self) -> torch.Tensor:
        return self.as_("v_prediction")

    def with_output(self, output: torch.Tensor) -> "Prediction":
        return Prediction(output, self.kind, self.x_t, self.alpha, self.sigma)
