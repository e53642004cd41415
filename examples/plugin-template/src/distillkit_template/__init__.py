"""distillkit-template: a complete small distillkit plugin to copy from (see docs/plugins.md).

Installed, it provides (the entry point's name, ``template``, is the prefix):

* ``template.anchored_gan``: a loss, diffusion-GAN on noised latents plus a teacher anchor;
* ``template.noisy_discriminator``: its critic, a discriminator on the bottleneck of a UNet that starts
  as the teacher (a LoRA adapter on the teacher's frozen UNet, or a full copy).

This module is what the entry point names: it only registers classes. Registration runs for every
distillkit command, ``--help`` excepted, so it must stay cheap: import heavy libraries where a model is built.
"""

from __future__ import annotations

import distillkit

from distillkit_template.critic import NoisyDiscriminator
from distillkit_template.losses import AnchoredGAN

__all__ = ["AnchoredGAN", "NoisyDiscriminator"]
__version__ = "0.1.0"


@distillkit.hookimpl
def register_losses(register):
    register(AnchoredGAN)


@distillkit.hookimpl
def register_critics(register):
    register(NoisyDiscriminator)
