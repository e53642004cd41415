"""What a model family must provide so every method works on it unchanged.

A backbone owns the *frozen* parts of a text-to-image diffusion model (text encoders, tokenizers,
VAE, schedule) plus the teacher UNet as loaded. Methods never call a UNet directly: they call
``backbone.denoise(unet, x_t, t, cond)`` and get a :class:`~distillkit.diffusion.Prediction`, so SDXL's
added conditioning, dtype casts and ε/v differences stay in one place. New families (a toy world, a
DiT) register through the ``register_backbones`` hook like any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from distillkit.diffusion import NoiseSchedule, Prediction
from distillkit.models.conditioning import Conditioning


@dataclass
class UNetFeatures:
    """Encoder features of one denoiser pass (what diffusion-GAN discriminators read).

    ``down[i]`` is the output of the i-th encoder (down) block, finest first; ``mid`` is the bottleneck,
    the deepest and smallest map (DMD2's classifier input; SiDA takes its channel mean as logits).
    """

    down: list[torch.Tensor]
    mid: torch.Tensor


class Backbone:
    """Base class for model families. Subclasses set ``family`` and implement the methods below."""

    family: ClassVar[str] = ""
    #: how many pixels one diffusion-space cell covers (8 for SD's VAE, 1 in pixel space)
    spatial_factor: ClassVar[int] = 8

    schedule: NoiseSchedule
    #: the diffusers scheduler the source ships: its config (betas, prediction type) is what exports build on
    scheduler: object
    prediction_type: str
    teacher_unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    # -- loading / saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str, *, dtype: torch.dtype = torch.float32, revision: str | None = None,
                        variant: str | None = None, device: str | torch.device = "cpu") -> "Backbone":
        """Load from a hub id or a local diffusers folder through ``from_pretrained``."""
        raise NotImplementedError

    @classmethod
    def recipe_problems(cls, recipe) -> list:
        """Problems this family finds in a recipe without loading a model (``distillkit validate`` runs it):
        say, a ``data.resolution`` its VAE and UNet cannot halve down to the bottleneck. Items are
        :class:`distillkit.recipe.Problem` objects or ``(field path, message)`` pairs. Default: none."""
        return []

    def save_pipeline(self, unet: torch.nn.Module, path: str, scheduler=None) -> None:
        """Write a folder that the family's diffusers pipeline class loads with ``from_pretrained``
        (``scheduler`` replaces the teacher's; see :mod:`distillkit.schedulers`). ``unet`` is a module or a
        role's :class:`~distillkit.models.adapters.UNetRef` (an active adapter is folded into a copy)."""
        raise NotImplementedError

    def load_unet(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """A fresh trainable copy of the teacher UNet in ``dtype`` (the student's starting point)."""
        raise NotImplementedError

    def save_lora(self, unet, path: str) -> None:
        """Write the LoRA adapter of a role's ref (``UNetRef(unet, name)``) so ``pipe.load_lora_weights`` accepts it."""
        raise NotImplementedError

    # -- conditioning -------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], resolution: int) -> Conditioning:
        raise NotImplementedError

    def empty_conditioning(self, batch: int, resolution: int) -> Conditioning:
        """The empty prompt's conditioning (the unconditional CFG branch), expanded to ``batch``."""
        raise NotImplementedError

    # -- diffusion space <-> pixels -------------------------------------------------------------
    @property
    def channels(self) -> int:
        raise NotImplementedError

    def sample_shape(self, batch: int, resolution: int) -> tuple[int, ...]:
        size = resolution // self.spatial_factor
        return (batch, self.channels, size, size)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → diffusion space (scaled latents; identity in pixel space)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space → pixels in [-1, 1]. Differentiable: ADD back-propagates through it."""
        raise NotImplementedError

    #: whether :meth:`features` is implemented (``validate`` refuses GAN losses on families without it)
    supports_features: ClassVar[bool] = False

    @property
    def base_unet(self) -> torch.nn.Module:
        """The frozen UNet that LoRA roles attach their adapters to: the teacher's, unless the teacher is
        not a network with weights (a family whose teacher is computed in closed form overrides this)."""
        return self.teacher_unet

    # -- the denoiser call ----------------------------------------------------------------------
    def denoise(self, unet: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> Prediction:
        """One denoiser call. ``unet`` is a module or a :class:`~distillkit.models.adapters.UNetRef`."""
        raise NotImplementedError

    def features(self, unet: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                 cond: Conditioning) -> UNetFeatures:
        """Encoder features of one pass of ``unet`` (it may stop after the bottleneck); differentiable."""
        raise NotImplementedError(f"model family {self.family!r} provides no encoder features, so diffusion-GAN "
                                  f"losses cannot run on it")

    def to(self, device) -> "Backbone":
        raise NotImplementedError

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """Every frozen network the backbone holds (for requires_grad checks and device moves)."""
        raise NotImplementedError
