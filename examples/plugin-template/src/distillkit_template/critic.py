"""The critic: a time-aware discriminator on the bottleneck of a UNet that starts as the teacher.

Real latents and the student's latents are noised to the same timestep t and passed through a UNet
initialised from the teacher, up to its bottleneck (the decoder half never runs); a small convolutional
head turns the bottleneck map into one logit per sample. Noising both sides is the diffusion-GAN idea:
at large t the two distributions overlap, so the discriminator cannot win outright and its gradient
stays informative.

The UNet is one recipe key away from two memory layouts (``body``):

* ``"adapter"``: a LoRA adapter on the teacher's own frozen UNet. No second UNet exists in memory; the
  adapter's weights belong to this critic (optimised, checkpointed) and are switched on only for its calls.
* ``"copy"``: a full trainable fp32 copy of the teacher's UNet, held as a submodule.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

import distillkit


class NoisyDiscriminatorConfig(pydantic.BaseModel):
    """``[[critics]] name = "template.noisy_discriminator"`` -> ``params``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    body: Literal["adapter", "copy"] = pydantic.Field(
        "adapter", description="'adapter': a LoRA adapter on the teacher's frozen UNet (no second UNet in memory); "
                               "'copy': a full trainable fp32 copy of the teacher's UNet")
    rank: int = pydantic.Field(8, ge=1, description="LoRA rank of the adapter (body = 'adapter')")
    head_channels: int = pydantic.Field(64, ge=1, description="width of the head's hidden convolution")


class NoisyDiscriminator(distillkit.Critic):
    """One logit per sample (> 0: "real") for latents noised to timestep t."""

    name = "noisy_discriminator"
    Config = NoisyDiscriminatorConfig

    def __init__(self, config: NoisyDiscriminatorConfig, env: distillkit.BuildEnv):
        super().__init__(config, env)
        self.backbone = env.backbone
        # The teacher's network, trainable: an adapter named after this critic on the shared frozen base,
        # or a full fp32 copy of the teacher's weights.
        ref = env.unet(lora={"rank": config.rank} if config.body == "adapter" else None)
        if ref.shares_base:
            self.adopt("body", ref)  # the adapter lives in the teacher's UNet: adopting makes it ours
        else:
            self.body = ref.module  # a copy of our own: a submodule, moved and saved with the critic
        self.unet = ref  # how to call it: our adapter (if any) is active only during our calls
        width = env.backbone.base_unet.config.block_out_channels[-1]  # bottleneck channels
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(width, config.head_channels, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(config.head_channels, 1, 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """Logits (B,) of noisy latents ``x_t`` at timesteps ``t`` (B,) under prompt conditioning ``cond``.

        Differentiable with respect to ``x_t``: the generator phase back-propagates through this critic
        (frozen then) into the student's sample."""
        features = self.backbone.features(self.unet, x_t, t, cond)  # stops after the bottleneck
        return self.head(features.mid.float()).mean(dim=(1, 2, 3))
