"""The fake-score network: a copy of the teacher's denoiser trained on the student's samples.

SiD's f_ψ, VSD's LoRA ε_φ and DMD2's "fake UNet" are the same object: a denoiser initialised from the
teacher and trained by denoising score matching on detached student samples, so that it tracks the score
of the *student's* distribution. Methods differ only in how they train it (reduction, CFG scale κ1,
prompt dropout) and how they use it, which stays in their losses; the network lives here, in the core,
registered as ``core.fake_score``.

Two layouts, one key: ``lora = {rank = ...}`` makes it an adapter on the teacher's frozen UNet (no second
UNet in memory; its weights are the adapter's), no ``lora`` a full trainable copy of the teacher.
"""

from __future__ import annotations

from typing import Optional

import pydantic
import torch

from distillkit.diffusion import Prediction
from distillkit.models.adapters import UNetRef
from distillkit.models.backbone import UNetFeatures
from distillkit.models.conditioning import Conditioning
from distillkit.roles.critic import BuildEnv, Critic
from distillkit.roles.teacher import guided_prediction


class FakeScoreLora(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    rank: int = pydantic.Field(64, ge=1, description="LoRA rank (VSD/ProlificDreamer-style fake scores use 4-64)")
    alpha: Optional[float] = pydantic.Field(None, description="LoRA alpha; default: the rank (scale 1)")
    target_modules: list[str] = pydantic.Field(["to_k", "to_q", "to_v", "to_out.0"],
                                               description="UNet modules that get an adapter")


class FakeScoreConfig(pydantic.BaseModel):
    """``[[critics]] name = "core.fake_score"`` → ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    lora: Optional[FakeScoreLora] = pydantic.Field(
        None, description="a LoRA adapter on the teacher's frozen UNet (shared base, no copy); omit for a full "
                          "trainable copy of the teacher (SiD, DMD2)")


class FakeScore(Critic):
    """A denoiser initialised from the teacher; ``predict`` and ``features`` as the teacher's, trainable."""

    name = "fake_score"
    Config = FakeScoreConfig

    def __init__(self, config: FakeScoreConfig, env: BuildEnv):
        super().__init__(config, env)
        self.backbone = env.backbone
        ref = env.unet(lora=config.lora.model_dump() if config.lora else None)
        if ref.shares_base:
            self._ref = self.adopt("adapter", ref)
        else:
            self.net = ref.module  # a submodule: its weights are the critic's, moved and saved with it
            self._ref = UNetRef(self.net)

    @property
    def unet(self) -> UNetRef:
        """How to call the network (its adapter active, on a shared base)."""
        return self._ref

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning | None = None,
                scale: float = 1.0) -> Prediction:
        """The fake score's prediction with CFG ``scale`` (diffusers convention: 1 = conditional only,
        0 = unconditional only, negative = SiD's Anti-CFG); gradients flow through ``x_t``."""
        return guided_prediction(self.backbone, self._ref, x_t, t, cond, uncond, scale)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> UNetFeatures:
        """Encoder features of the fake score's pass (diffusion-GAN discriminators read them)."""
        return self.backbone.features(self._ref, x_t, t, cond)

    def denoising_loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Conditioning,
                       uncond: Conditioning | None = None, *, scale: float = 1.0, reduction: str = "mean") -> torch.Tensor:
        """Denoising score matching on (detached) samples x0: ||ε̂_ψ^scale(α_t x0 + σ_t ε, t) − ε||².

        ``reduction``: "mean" over all elements (VSD, DMD2) or "sum" per sample then the batch mean (SiD's
        ``sum / B``). ε-MSE equals v-MSE weighted by SNR/(SNR+1), so the network's parameterisation does
        not matter. For prompt dropout pass ``cond`` already mixed with ``uncond`` (``Conditioning.where``).
        """
        x_t = self.backbone.schedule.add_noise(x0.detach(), noise, t)
        err = (self.predict(x_t, t, cond, uncond, scale).eps.float() - noise.float()).pow(2)
        if reduction == "mean":
            return err.mean()
        if reduction == "sum":
            return err.flatten(1).sum(dim=1).mean()
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    def forward(self, x_t, t, cond, uncond=None, scale: float = 1.0) -> Prediction:
        return self.predict(x_t, t, cond, uncond, scale)
