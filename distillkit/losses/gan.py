"""Diffusion-GAN terms shared by the methods that train a discriminator on noised latents (DMD2, SiDA,
few-step SiD): the non-saturating logistic losses and SiDA's zero-parameter logits.

    generator:      softplus(−D(fake))                 = BCE(D(fake), 1)
    discriminator:  softplus(−D(real)) + softplus(D(fake)) = BCE(D(real), 1) + BCE(D(fake), 0)

Pure tensor functions; which features the logits come from, how real and fake are noised and how the
terms are weighted stay with each method (see ``docs/methods.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clamped(logits: torch.Tensor, limit: float | None) -> torch.Tensor:
    """``clamp(logits, −limit, limit)`` (the SiD family's ±10), or the logits unchanged for None."""
    return logits if limit is None else logits.clamp(-limit, limit)


def generator_logistic(fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample non-saturating generator loss softplus(−D(fake)), averaged over each sample's logits: (B,)."""
    return F.softplus(-fake_logits.float()).flatten(1).mean(dim=1)


def discriminator_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (real term, fake term): softplus(−D(real)) and softplus(D(fake)), each (B,)."""
    real = F.softplus(-real_logits.float()).flatten(1).mean(dim=1)
    fake = F.softplus(fake_logits.float()).flatten(1).mean(dim=1)
    return real, fake


def channel_mean_logits(bottleneck: torch.Tensor) -> torch.Tensor:
    """SiDA's discriminator without new parameters: the channel mean of the encoder bottleneck, (B, H, W)."""
    return bottleneck.float().mean(dim=1)
