"""What the SiD losses of one phase share: the (t, ε) draw, the fake score's conditioning, SiD's weight.

In the authors' code one noisy copy x_t = α_t x_g + σ_t ε feeds the teacher, the fake score and (with
the diffusion-GAN) the discriminator logits, and real images are noised with the *same* t and ε. Here
``sid.sid`` and the GAN losses are separate recipe entries (so the GAN is a one-key ablation with its
own weight ramp), and they meet through the phase's memo (``ctx.cached`` / ``ctx.memo``):

* :func:`noise` — one (t, ε) per phase and t range, whichever loss asks first;
* :func:`publish_fake_conditioning` / :func:`fake_conditioning` — the prompts after the fake score's
  prompt dropout, so the discriminator sees the same ones (SiD-DiT drops real and fake captions alike);
* :func:`publish_weight` / :func:`sid_weight` — SiD's per-sample normaliser w, which also scales the
  GAN's generator term. It needs the teacher at SiD's scale κ4, so only ``sid.sid`` computes it: list
  ``sid.sid`` before a GAN loss in ``[[losses]]``.
"""

from __future__ import annotations

from typing import Optional

import torch

from distillkit import DistillkitError


def noise(ctx, like: torch.Tensor, t_min: int, t_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, ε) for noising ``like`` in this phase: t ~ U{t_min..t_max} per sample, ε ~ N(0, I)."""

    def draw():
        t = ctx.sample_timesteps(like.shape[0], t_min, t_max).to(like.device)
        return t, ctx.randn_like(like.float())

    return ctx.cached(("sid.noise", t_min, t_max, tuple(like.shape)), draw)


def publish_fake_conditioning(ctx, dropout: float):
    """The batch's conditioning with each prompt replaced by the empty one with probability ``dropout``."""

    def make():
        if dropout <= 0:
            return ctx.cond
        mask = ctx.rand(ctx.batch_size) < dropout
        return ctx.cond.where(mask, ctx.uncond)

    return ctx.cached(("sid.fake_cond",), make)


def fake_conditioning(ctx):
    """The fake score's training conditioning if ``sid.sid`` made one in this phase, else the prompts."""
    return ctx.memo.get(("sid.fake_cond",), ctx.cond)


def publish_weight(ctx, t_min: int, t_max: int, weight: torch.Tensor) -> None:
    ctx.memo[("sid.weight", t_min, t_max)] = weight.detach()


def sid_weight(ctx, t_min: int, t_max: int, who: str) -> torch.Tensor:
    """SiD's w (B,) on this phase's draw; a clear error when no ``sid.sid`` loss computed it first."""
    w: Optional[torch.Tensor] = ctx.memo.get(("sid.weight", t_min, t_max))
    if w is None:
        raise DistillkitError(
            f"{who} scales its generator term by SiD's weight 1/mean|x_g - f_teacher|, which sid.sid computes: list "
            f"sid.sid (with the same t_min/t_max, {t_min}/{t_max}) before {who} in [[losses]], or set "
            f"params.weighting = \"none\"")
    return w
