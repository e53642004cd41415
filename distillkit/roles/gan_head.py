"""A small trainable classifier on a denoiser's bottleneck: the discriminator of DMD2's diffusion-GAN.

DMD2 (Yin et al. 2024) reads the fake-score UNet's mid-block output and maps it through a few stride-2
convolutions with GroupNorm and SiLU to logits (SDXL: four, SD1.5: two), then a 1×1 convolution. (DMD2's
convolutions are 4×4; these are 3×3 so that a map already at 1×1, as in small test models, still passes.) Here it
is a critic of its own (``core.gan_head``, with its own optimiser and weight per phase), bound to a loss
beside the fake score whose features it reads; the loss decides where the features come from.
"""

from __future__ import annotations

import pydantic
import torch

from distillkit.roles.critic import BuildEnv, Critic


class GANHeadConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    num_convs: int = pydantic.Field(2, ge=0, description="stride-2 conv blocks before the 1x1 logit conv "
                                                         "(DMD2: 4 for SDXL, 2 for SD1.5)")
    channels: int | None = pydantic.Field(None, ge=1, description="width of the conv blocks; default: the "
                                                                  "bottleneck's channel count")


def _groups(channels: int) -> int:
    return max(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class GANHead(Critic):
    name = "gan_head"
    Config = GANHeadConfig

    def __init__(self, config: GANHeadConfig, env: BuildEnv):
        super().__init__(config, env)
        in_ch = int(env.backbone.base_unet.config.block_out_channels[-1])
        width = config.channels or in_ch
        layers: list[torch.nn.Module] = []
        ch = in_ch
        for _ in range(config.num_convs):
            layers += [torch.nn.Conv2d(ch, width, 3, stride=2, padding=1), torch.nn.GroupNorm(_groups(width), width),
                       torch.nn.SiLU()]
            ch = width
        layers.append(torch.nn.Conv2d(ch, 1, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Logits (B, h, w) from a bottleneck map (B, C, H, W) (in the head's dtype, float32)."""
        return self.net(bottleneck.float()).squeeze(1)
