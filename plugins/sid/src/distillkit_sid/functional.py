"""Score identity Distillation as pure tensor functions: the generator loss, the fake-score loss, the
diffusion-GAN terms and the few-step schedule.

Notation: x_t = α_t x0 + σ_t ε. The generator's sample is x_g; at a noisy copy x_t of it the teacher
predicts f_φ(x_t) (``y_real``, with its CFG scale κ4) and the fake score f_ψ(x_t) (``y_fake``, scale κ2);
both are x0-predictions. SiD (Zhou et al. 2024, arXiv 2404.04057, eq. for L̃_θ) minimises, per sample,

    L(α) = (f_φ − f_ψ)ᵀ ((f_φ − x_g) − α (f_φ − f_ψ)) / w,      w = max(mean|x_g − f_φ|, floor)

where the paper's ω(t)/σ_t⁴ is realised in the authors' code as 1/w, computed without gradient from the
*guided* teacher. Expanding gives L(α) = L(1) + (1 − α)‖f_φ − f_ψ‖²/w, L(1) = (f_φ − f_ψ)ᵀ(f_ψ − x_g)/w and
L(0) = (f_φ − f_ψ)ᵀ(f_φ − x_g)/w. The code sums over every element and divides by the per-process batch,
then multiplies by ``lsg`` (1 in SiD-LSG, 100 in the EDM code): a per-sample sum, then the batch mean.

Nothing here owns a module or draws random numbers, so each formula can be checked by hand
(``tests/test_functional.py``); the loss classes only gather the tensors.
"""

from __future__ import annotations

from typing import Optional

import torch

from distillkit.losses.gan import clamped, discriminator_logistic, generator_logistic

#: SiD's floor on the normaliser w (``clip(min=0.00001)`` in the authors' code)
WEIGHT_FLOOR = 1e-5


def _per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


@torch.no_grad()
def weight_factor(x_g: torch.Tensor, y_real: torch.Tensor, floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """w = max(mean_{CHW} |x_g − f_φ|, floor) per sample, shape (B,), with no gradient (it is a weight)."""
    return (x_g.float() - y_real.float()).abs().flatten(1).mean(dim=1).clamp_min(floor)


def sid_per_sample(x_g: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float,
                   weight: Optional[torch.Tensor] = None, floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """(f_φ − f_ψ)ᵀ((f_φ − x_g) − α(f_φ − f_ψ)) / w for each sample, shape (B,).

    Gradients flow through all three inputs as they come: pass ``y_real``/``y_fake`` with their graphs
    to differentiate through the networks' inputs (SiD), or detached for the direct path only.
    ``weight`` (B,) overrides w (it is detached either way).
    """
    x_g, y_real, y_fake = x_g.float(), y_real.float(), y_fake.float()
    w = weight_factor(x_g, y_real, floor) if weight is None else weight.detach().float()
    diff = y_real - y_fake
    per = diff * ((y_real - x_g) - alpha * diff)
    return _per_sample_sum(per) / w


def sid_generator_loss(x_g: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float = 1.2,
                       lsg: float = 1.0, weight: Optional[torch.Tensor] = None,
                       floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """SiD's generator loss as the authors' code reduces it: Σ over elements / B × ``lsg`` (a scalar)."""
    return sid_per_sample(x_g, y_real, y_fake, alpha, weight, floor).mean() * lsg


def fake_score_loss(eps_pred: torch.Tensor, eps: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Denoising score matching of the fake score: ‖ε̂_ψ − ε‖² summed per sample, batch mean, × ``scale``.

    ``eps_pred`` is the fake score's prediction at its training CFG scale κ1 (SiD-LSG trains
    ε_ψ(∅) + κ1(ε_ψ(c) − ε_ψ(∅)) onto ε). The code's v-prediction form, (v̂ − v)²·SNR/(SNR+1), is the
    same number, so ε is used for every parameterisation.
    """
    return _per_sample_sum((eps_pred.float() - eps.float()).pow(2)).mean() * scale


def needs_unconditional_branch(*scales: float) -> bool:
    """SiD-LSG's rule for prompt dropout in fake-score training: needed when any of the fake score's
    scales (κ1 in training, κ2 in the generator loss) is not exactly 1 (scale 1 uses the prompt alone)."""
    return any(float(s) != 1.0 for s in scales)


# -- the diffusion-GAN terms (SiDA, few-step SiD) ---------------------------------------------------
def gan_generator_loss(fake_logits: torch.Tensor, clamp: Optional[float] = 10.0,
                       weight: Optional[torch.Tensor] = None, elements: int = 1, scale: float = 1.0) -> torch.Tensor:
    """BCE(clamp(D(x_t^fake)), 1) = softplus(−clamp(D)), averaged over each sample's logits, × ``weight``
    (B,) (SiD's 1/w, or 1), × ``elements`` (C·H·W of the sample, as the code does to put it on the scale of
    the summed SiD loss), then Σ / B × ``scale`` (the code's ``lsg_gan``).

    The clamp is the SiD family's ±10: beyond it the logit is constant, so its gradient is zero there.
    """
    per = generator_logistic(clamped(fake_logits, clamp))
    if weight is not None:
        per = per * weight.detach().float()
    return (per * elements).mean() * scale


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, clamp: Optional[float] = 10.0,
                           elements: int = 1, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's terms, each (BCE(D(real), 1), BCE(D(fake), 0)) averaged over a sample's logits,
    halved ((real + fake)/2 in the code), × ``elements``, Σ / B × ``scale`` (``lsd``). Returns the real
    and the fake part; their sum is the loss."""
    real, fake = discriminator_logistic(clamped(real_logits, clamp), clamped(fake_logits, clamp))
    return (real * elements / 2).mean() * scale, (fake * elements / 2).mean() * scale


# -- few-step generation ----------------------------------------------------------------------------
def few_step_timesteps(t_init: int, steps: int) -> list[int]:
    """t_i = ⌊t_init (1 − i/K)⌋ for i = 0..K−1 (SiD-LSG's multi-step sampler): 625, 468, 312, 156 for K = 4."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [int(t_init * (1 - i / steps)) for i in range(steps)]
