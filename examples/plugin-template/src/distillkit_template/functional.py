"""The loss maths as plain functions of tensors: testable against hand-derived values without any model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_logistic(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: mean softplus(-D(fake)) = mean -log sigmoid(D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic loss of the discriminator, as (real term, fake term): mean softplus(-D(real)) and mean
    softplus(D(fake)); their sum is the binary cross-entropy of "real" = 1, "fake" = 0."""
    return F.softplus(-real_logits.float()).mean(), F.softplus(fake_logits.float()).mean()
