"""Differentiable augmentation for the discriminator's inputs, seeded by an explicit generator.

DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020)
applies the *same kind* of random transform to real and fake images before the discriminator, and the
transforms are differentiable so the generator's gradient passes through them. StyleGAN-T (and hence
ADD's discriminator, docs/methods.md "ADD") uses the policy ``'color,translation,cutout'`` on [-1, 1] images,
then takes a random crop at the feature network's resolution with probability 0.5 when the image is
larger than that resolution.

The reference code draws from the global RNG; here every draw comes from a ``torch.Generator`` (on the
CPU, moved to the image's device afterwards), so a training step is reproducible from (seed, step,
rank, phase) and resumes draw exactly what an uninterrupted run would.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Generator = Optional[torch.Generator]


def _rand(n: int, generator: Generator, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) uniforms on [0, 1) in ``like``'s dtype and device."""
    return torch.rand((n, 1, 1, 1), generator=generator).to(device=like.device, dtype=like.dtype)


def _randint(low: int, high: int, n: int, generator: Generator, device) -> torch.Tensor:
    """(n, 1, 1) integers on [low, high) — the shape the reference code broadcasts against its grids."""
    return torch.randint(low, high, (n, 1, 1), generator=generator).to(device)


def rand_brightness(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Add one offset per image, uniform on [−0.5, 0.5)."""
    return x + (_rand(x.shape[0], generator, x) - 0.5)


def rand_saturation(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Scale each image's deviation from its per-pixel channel mean by a factor uniform on [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x.shape[0], generator, x) * 2) + mean


def rand_contrast(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Scale each image's deviation from its global mean by a factor uniform on [0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x.shape[0], generator, x) + 0.5) + mean


def rand_translation(x: torch.Tensor, generator: Generator = None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction, filling with zeros."""
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = _randint(-shift_h, shift_h + 1, b, generator, x.device)
    ty = _randint(-shift_w, shift_w + 1, b, generator, x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2).contiguous()


def rand_cutout(x: torch.Tensor, generator: Generator = None, ratio: float = 0.2) -> torch.Tensor:
    """Zero one square of ``ratio`` × the image size per image, at a uniformly random centre."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = _randint(0, h + (1 - ch % 2), b, generator, x.device)
    oy = _randint(0, w + (1 - cw % 2), b, generator, x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


AUGMENTATIONS: dict[str, list[Callable]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def parse_policy(policy: str | None) -> list[str]:
    """``'color,translation,cutout'`` → its parts; None or '' → no augmentation. Unknown parts raise."""
    parts = [p.strip() for p in (policy or "").split(",") if p.strip()]
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy part(s) {unknown}; expected a comma-separated subset of "
                         f"{sorted(AUGMENTATIONS)}")
    return parts


def diff_augment(x: torch.Tensor, policy: str | None = "color,translation,cutout",
                 generator: Generator = None) -> torch.Tensor:
    """DiffAugment on a batch (B, C, H, W); shape-preserving and differentiable w.r.t. ``x``."""
    for part in parse_policy(policy):
        for fn in AUGMENTATIONS[part]:
            x = fn(x, generator)
    return x


def random_crop(x: torch.Tensor, size: int, p: float = 0.5, generator: Generator = None) -> torch.Tensor:
    """StyleGAN-T's crop: with probability ``p``, one random ``size``×``size`` window for the whole batch.

    Only when the image is larger than ``size`` (otherwise the discriminator resizes instead), so it is
    automatically off for small training resolutions.
    """
    h, w = x.shape[-2:]
    if p <= 0 or (h <= size and w <= size):
        return x
    if float(torch.rand((), generator=generator)) >= p:
        return x
    top = int(torch.randint(0, max(h - size, 0) + 1, (), generator=generator))
    left = int(torch.randint(0, max(w - size, 0) + 1, (), generator=generator))
    return x[..., top:top + min(size, h), left:left + min(size, w)]
