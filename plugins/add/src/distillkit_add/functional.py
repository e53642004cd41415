"""ADD's objectives as pure tensor functions: hinge GAN terms, R1, and the distillation weighting.

Notation (docs/methods.md, "Notation" and "ADD"): x_t = α_t x0 + σ_t ε. The discriminator is a set of heads D_k on frozen
features f_k = F_k(x); each head returns one logit per token, shaped (B, N_k). Nothing here owns a
module or randomness, so every formula can be checked against values derived by hand
(``tests/test_functional.py``).

Two reductions of the hinge loss exist (docs/methods.md, ADD choice 1) and both are kept:

* ``"paper"`` — ADD eq. (2)-(3) (arXiv 2311.17042 §3.2): the hinge is applied per token logit, averaged
  over a head's tokens, **summed over heads** and averaged over the batch;
* ``"stylegan_t"`` — StyleGAN-T's ``training/loss.py``: all heads' token logits concatenated,
  ``relu(1 ∓ l).mean() / B`` (an extra 1/B on top of the mean).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

# The SDS weighting and the NFSD direction are shared with the SDS plugin, so they live in the core;
# NFSD_NEGATIVE_PROMPT and nfsd_direction stay importable from here for ADD's losses and tests.
from distillkit.diffusion.score_weights import NFSD_NEGATIVE_PROMPT, nfsd_direction, score_weight  # noqa: F401

Reduction = Literal["paper", "stylegan_t"]
Weighting = Literal["exp", "sds", "nfsd"]
SDSWeight = Literal["sigma2", "uniform"]
DistanceReduction = Literal["sum", "mean"]

REDUCTIONS: tuple[str, ...] = ("paper", "stylegan_t")


def _check(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown hinge reduction {reduction!r}; expected one of {REDUCTIONS}")


def _paper_mean(per_token: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_k mean_tokens(·) per sample, then the batch mean: ADD's Σ_k inside an expectation over x."""
    per_sample = sum(t.flatten(1).float().mean(dim=1) for t in per_token)
    return per_sample.mean()


def _stylegan_t_mean(per_token: Sequence[torch.Tensor]) -> torch.Tensor:
    """StyleGAN-T: mean over every token of every head, then divided by the batch size once more."""
    flat = torch.cat([t.flatten(1).float() for t in per_token], dim=1)
    return flat.mean() / flat.shape[0]


def _reduce(per_token: Sequence[torch.Tensor], reduction: str) -> torch.Tensor:
    _check(reduction)
    return _paper_mean(per_token) if reduction == "paper" else _stylegan_t_mean(per_token)


def hinge_d_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor],
                 reduction: Reduction = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's hinge terms (ADD eq. 3 without R1): ``(real_term, fake_term)``.

    real_term = E_x0[Σ_k max(0, 1 − D_k(F_k(x0)))], fake_term = E[Σ_k max(0, 1 + D_k(F_k(x̂_θ)))].
    Returned separately so both can be logged; the loss is their sum.
    """
    real = _reduce([F.relu(1.0 - l.float()) for l in real_logits], reduction)
    fake = _reduce([F.relu(1.0 + l.float()) for l in fake_logits], reduction)
    return real, fake


def hinge_g_loss(fake_logits: Sequence[torch.Tensor], reduction: Reduction = "paper") -> torch.Tensor:
    """The generator's adversarial term (ADD eq. 2): L_adv^G = −E[Σ_k D_k(F_k(x̂_θ))]."""
    return _reduce([-l.float() for l in fake_logits], reduction)


def r1_penalty(logits_per_head: Sequence[torch.Tensor], inputs_per_head: Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) w.r.t. each head's *input* f_k, as ADD §3.2 specifies (not pixels).

    R1 = E_x0[ Σ_k ||∇_{f_k} Σ_tokens D_k(f_k)||² ]: the gradient of the sum of all of a sample's token
    logits (each token logit is one patch-discriminator output, as in the hinge), squared and summed
    per sample, summed over heads, averaged over the batch. ``create_graph=True`` so the penalty
    itself back-propagates into the heads' parameters.

    The caller multiplies by γ (ADD: γ = 1e-5) in the paper's form γ·R1; StyleGAN2's code uses
    (γ/2)·R1 — the factor of two is a documented ambiguity (docs/methods.md, ADD choice 2), default the paper's.
    Each input must be a leaf-like tensor with ``requires_grad=True`` that the logits were computed from.
    """
    if len(logits_per_head) != len(inputs_per_head):
        raise ValueError(f"{len(logits_per_head)} heads' logits but {len(inputs_per_head)} head inputs")
    total = sum(l.float().sum() for l in logits_per_head)
    grads = torch.autograd.grad(total, list(inputs_per_head), create_graph=True)
    per_sample = sum(g.float().pow(2).flatten(1).sum(dim=1) for g in grads)
    return per_sample.mean()


# -- distillation (ADD §3.3) -------------------------------------------------------------------------
def sds_w(sigma: torch.Tensor, kind: SDSWeight = "sigma2") -> torch.Tensor:
    """The SDS weight w(t): σ_t² = 1 − ᾱ_t (DreamFusion's choice, threestudio 'sds') or 1 ('uniform')."""
    if kind not in ("sigma2", "uniform"):
        raise ValueError(f"unknown SDS weight {kind!r}; expected 'sigma2' or 'uniform'")
    return score_weight("sds" if kind == "sigma2" else "uniform", sigma)


def distill_weight(kind: Weighting, alpha: torch.Tensor, sigma: torch.Tensor,
                   sds_weight: SDSWeight = "sigma2") -> torch.Tensor:
    """c(t) of ADD eq. (4).

    * ``exp``: c(t) = α_t — the paper's §3.3 "exponential" weighting, "higher noise levels contribute
      less" (ᾱ_t would also fit the phrase; docs/methods.md ADD choice 3 — α_t is what the text writes).
    * ``sds`` and ``nfsd``: c(t) = α_t w(t) / (2σ_t). ADD appendix A: with d = ||·||² in the space where
      the noise is added, ∇_x c(t)||x − x̂_ψ||² = 2c(t)(σ_t/α_t)(ε̂ − ε') = w(t)(ε̂ − ε'), the SDS gradient.
      NFSD keeps this c and changes the target (:func:`nfsd_target`).
    """
    if kind == "exp":
        return alpha
    if kind in ("sds", "nfsd"):
        return alpha * sds_w(sigma, sds_weight) / (2.0 * sigma)
    raise ValueError(f"unknown distillation weighting {kind!r}; expected 'exp', 'sds' or 'nfsd'")


def nfsd_target(x0: torch.Tensor, direction: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The constant target x̂ − (σ_t/α_t) g for NFSD inside ADD's distillation form (docs/methods.md, ADD choice 4).

    With c(t) = α_t w/(2σ_t): ∇_x c||x − sg(target)||² at x = x̂ is 2c(σ_t/α_t) g = w(t) g — the NFSD
    update. Returned detached: it is a target, never a gradient path.
    """
    return (x0.detach() - (sigma / alpha) * direction).detach()


def distill_distance(x: torch.Tensor, target: torch.Tensor, c: torch.Tensor,
                     reduction: DistanceReduction = "sum") -> torch.Tensor:
    """E[c(t) d(x, sg(target))], d = ||·||²₂ (ADD eq. 4).

    ``"sum"`` (the paper's d): a per-sample sum of squares; ``"mean"``: per-sample mean over elements.
    Then c-weighted and averaged over the batch. ``c`` is anything with B elements.
    """
    diff = (x.float() - target.detach().float()).pow(2).flatten(1)
    if reduction == "sum":
        per_sample = diff.sum(dim=1)
    elif reduction == "mean":
        per_sample = diff.mean(dim=1)
    else:
        raise ValueError(f"unknown distance reduction {reduction!r}; expected 'sum' or 'mean'")
    return (c.reshape(-1).to(per_sample) * per_sample).mean()
