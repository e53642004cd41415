"""The score-distillation objectives as pure tensor functions: directions, surrogates, critic terms.

Notation: x_t = α_t x + σ_t ε, x the student's sample (latents), t an integer timestep of the teacher's
VP schedule. Score distillation never back-propagates through a diffusion network: each method computes
a *direction* g (a detached tensor shaped like x) and hands the student the surrogate

    L = ½‖x − sg(x − g)‖²,   whose gradient with respect to x is exactly g (times the reduction factor),

so the student's optimiser sees g through the generator's Jacobian alone. The reduction follows each
method's reference code: threestudio (SDS, NFSD, VSD) sums over elements and divides by the batch
(``"sum"``: ∂L/∂x = g/B); DMD2 takes ``F.mse_loss(..., reduction="mean")`` (``"mean"``: ∂L/∂x = g/numel).

Directions (the weightings w(t) and the NFSD combination are the core's,
:mod:`distillkit.diffusion.score_weights`):

* SDS (DreamFusion):         g = w(t)(ε̂_cfg(x_t) − ε)
* NFSD (Katzir et al.):      g = w(t)(δ_D + s δ_C)
* VSD (ProlificDreamer):     g = w(t)(ε̂_teacher^cfg(x_t) − ε̂_fake(x_t))
* DMD / DMD2:                g = (x̂0_fake − x̂0_teacher) / mean_CHW|x − x̂0_teacher|, x̂0 from ε in float64

Because ε̂_teacher − ε̂_fake = (α_t/σ_t)(x̂0_fake − x̂0_teacher) at the same x_t, the VSD and DMD directions
are the same vector up to a positive per-sample factor w(t)(α_t/σ_t)·mean|x − x̂0_teacher|.

The critic side: the fake score's denoising loss (ε-MSE on detached samples, mean-reduced as VSD and DMD2
do) is ``core.fake_score``'s own ``denoising_loss``; DMD2's GAN terms are below.

Nothing here owns a module or draws random numbers, so every formula is checked against hand-derived
values in ``tests/test_functional.py``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from distillkit.diffusion.score_weights import nfsd_direction as _nfsd_combination
from distillkit.losses.gan import discriminator_logistic, generator_logistic

Reduction = Literal["sum", "mean"]
REDUCTIONS: tuple[str, ...] = ("sum", "mean")


# -- the surrogate --------------------------------------------------------------------------------
def surrogate_loss(x: torch.Tensor, direction: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
    """½‖x − sg(x − g)‖², reduced as ``reduction`` says; its gradient with respect to x is g/B ("sum",
    threestudio: the squared error summed over elements, divided by the batch size) or g/numel(x)
    ("mean", DMD2). Its *value* is ½‖g‖² per the same reduction: a magnitude to log, not a quantity the
    student decreases."""
    target = (x - direction.to(x.dtype)).detach()
    if reduction == "sum":
        return 0.5 * F.mse_loss(x.float(), target.float(), reduction="sum") / x.shape[0]
    if reduction == "mean":
        return 0.5 * F.mse_loss(x.float(), target.float(), reduction="mean")
    raise ValueError(f"unknown surrogate reduction {reduction!r}; expected one of {REDUCTIONS}")


def clean_direction(direction: torch.Tensor, clamp: Optional[float] = None, nan_to_num: bool = True) -> torch.Tensor:
    """threestudio's post-processing of a direction: NaN/Inf → finite (``torch.nan_to_num``: NaN → 0,
    ±Inf → the dtype's extremes), then an optional elementwise clamp to [−clamp, clamp]."""
    if nan_to_num:
        direction = torch.nan_to_num(direction)
    if clamp is not None:
        direction = direction.clamp(-clamp, clamp)
    return direction


def _per_sample(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A weight with one value per sample (any shape holding B values, or a scalar) broadcast against ``like``."""
    w = torch.as_tensor(w, device=like.device, dtype=like.dtype)
    return w if w.dim() == 0 else w.reshape(-1, *([1] * (like.dim() - 1)))


# -- directions -----------------------------------------------------------------------------------
def sds_direction(eps_guided: torch.Tensor, noise: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SDS (DreamFusion, Poole et al. 2022, eq. 3): w(t)(ε̂_cfg(x_t; y) − ε), ε the noise that made x_t."""
    return _per_sample(w, eps_guided) * (eps_guided - noise.to(eps_guided.dtype))


def nfsd_direction(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eps_neg: torch.Tensor, t: torch.Tensor,
                   w: torch.Tensor, scale: float = 7.5, threshold: int = 200) -> torch.Tensor:
    """NFSD (Katzir et al., arXiv 2310.17590): w(t)(δ_D + s δ_C), with δ_D switching at t = ``threshold``."""
    return _per_sample(w, eps_cond) * _nfsd_combination(eps_cond, eps_uncond, eps_neg, t, scale, threshold)


def vsd_direction(eps_teacher: torch.Tensor, eps_fake: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """VSD (ProlificDreamer, Wang et al. 2023, eq. 9): w(t)(ε̂_teacher^cfg(x_t) − ε̂_fake(x_t)).

    When the student's distribution is a single point x (a Dirac), its exact noised score predicts
    ε̂_fake(x_t) = (x_t − α_t x)/σ_t = ε, the injected noise, and this is the SDS direction: SDS is VSD
    with one particle."""
    return _per_sample(w, eps_teacher) * (eps_teacher - eps_fake.to(eps_teacher.dtype))


def x0_from_eps_float64(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂0 = (x_t − σ_t ε̂)/α_t in float64, as DMD2's ``get_x0_from_noise`` computes it: 1/α_t reaches
    14.6 at t = 999, and the difference of two such estimates is what DMD's direction is made of."""
    a, s = _per_sample(alpha, x_t.double()), _per_sample(sigma, x_t.double())
    return (x_t.double() - s * eps.double()) / a


def dmd_direction(x: torch.Tensor, x0_teacher: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """DMD's distribution-matching direction (Yin et al. 2024, DMD eq. 7-8 as DMD2's code computes it):

        g = (p_real − p_fake) / mean_CHW|p_real|,  p_real = x − x̂0_teacher,  p_fake = x − x̂0_fake
          = (x̂0_fake − x̂0_teacher) / mean_CHW|x − x̂0_teacher|

    per sample, in float64. DMD2 then applies ``nan_to_num`` (a sample the teacher reconstructs exactly
    divides by zero): :func:`clean_direction`, which every loss here runs. The normaliser is the paper's weighting w_t ∝ CS/‖μ_real − x‖₁ with the σ/α factor of
    score-vs-x0 absorbed."""
    x64 = x.detach().double()
    p_real = x64 - x0_teacher.double()
    p_fake = x64 - x0_fake.double()
    norm = p_real.abs().flatten(1).mean(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
    return (p_real - p_fake) / norm


# -- critic and GAN terms -------------------------------------------------------------------------
def dmd2_generator_gan(fake_logits: torch.Tensor) -> torch.Tensor:
    """DMD2's ``gen_cls_loss``: the mean of softplus(−D(x̂_t)), the non-saturating generator loss −log σ(D)
    (the core's per-sample term, averaged over the batch)."""
    return generator_logistic(fake_logits).mean()


def dmd2_discriminator_gan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DMD2's ``guidance_cls_loss`` as its two terms (real, fake): the means of softplus(−D(x_t)) and of
    softplus(D(x̂_t')); DMD2 adds them without a ½ (binary cross-entropy on each side)."""
    real, fake = discriminator_logistic(real_logits, fake_logits)
    return real.mean(), fake.mean()


def dreamfusion_to_diffusers(omega: float) -> float:
    """DreamFusion's guidance weight ω (ε̂ = ε_c + ω(ε_c − ε_u), threestudio's ``guidance_scale`` for SDS)
    as the diffusers scale s of ε̂ = ε_u + s(ε_c − ε_u) that distillkit's recipes use: s = 1 + ω."""
    return 1.0 + float(omega)
