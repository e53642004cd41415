"""Score-distillation pieces shared by several methods: the weightings w(t) and the NFSD direction.

Every score-distillation update has the form w(t)·(difference of noise predictions), with
x_t = α_t x0 + σ_t ε. The weighting says how much each noise level contributes:

* ``"sds"``: w = σ_t² = 1 − ᾱ_t (DreamFusion's choice; threestudio's ``weighting_strategy: sds``);
* ``"uniform"``: w = 1;
* ``"fantasia3d"``: w = α_t σ_t² (threestudio's ``fantasia3d`` strategy).

Noise-Free Score Distillation (Katzir et al., arXiv 2310.17590) replaces the SDS difference
ε̂_cfg − ε by δ_D + s·δ_C, built from three predictions of the frozen teacher at the same x_t: with the
prompt, with the empty prompt and with a fixed negative prompt. ADD uses it inside its distillation
loss, the SDS plugin as a student objective; both take it from here.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

Weighting = Literal["sds", "uniform", "fantasia3d"]
WEIGHTINGS: tuple[str, ...] = ("sds", "uniform", "fantasia3d")

#: The NFSD paper's negative prompt y_neg (Katzir et al., arXiv 2310.17590).
NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")


def score_weight(kind: Weighting, sigma: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w(t) from the schedule's σ_t (and α_t, needed by ``fantasia3d`` only), shaped like ``sigma``."""
    if kind == "sds":
        return sigma.pow(2)
    if kind == "uniform":
        return torch.ones_like(sigma)
    if kind == "fantasia3d":
        if alpha is None:
            raise ValueError("the 'fantasia3d' weighting α_t σ_t² needs α_t")
        return alpha * sigma.pow(2)
    raise ValueError(f"unknown score-distillation weighting {kind!r}; expected one of {WEIGHTINGS}")


def nfsd_direction(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eps_neg: torch.Tensor, t: torch.Tensor,
                   scale: float = 7.5, threshold: int = 200) -> torch.Tensor:
    """The NFSD direction δ_D + s·δ_C (before w(t)).

    δ_C = ε(y) − ε(∅) is the prompt's component. δ_D removes the "domain" component: below ``threshold``
    (t < 200, where the unconditional prediction is almost all domain) δ_D = ε(∅); above it
    δ_D = ε(∅) − ε(y_neg), the negative prompt standing in for the noise the prediction still contains.
    ``t`` is per sample, so the switch is per sample. The injected noise ε does not appear.
    """
    delta_c = eps_cond - eps_uncond
    low = torch.as_tensor(t, device=eps_uncond.device).reshape(-1) < threshold
    low = low.reshape(-1, *([1] * (eps_uncond.dim() - 1)))
    delta_d = torch.where(low, eps_uncond, eps_uncond - eps_neg)
    return delta_d + scale * delta_c
