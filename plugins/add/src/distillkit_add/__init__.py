"""ADD — Adversarial Diffusion Distillation (Sauer et al., arXiv 2311.17042; the SDXL-Turbo method).

Registered through distillkit's public hooks exactly like a third-party plugin (entry point ``add``):

* ``add.adversarial`` — hinge GAN loss against ``add.discriminator`` (ADD §3.2);
* ``add.distill`` — the teacher-target distillation loss with exp / sds / nfsd weighting (ADD §3.3);
* ``add.discriminator`` — frozen ViT features + trainable StyleGAN-T heads (the critic).
"""

from __future__ import annotations

import distillkit

from distillkit_add.discriminator import Discriminator
from distillkit_add.losses import Adversarial, Distill

__all__ = ["Adversarial", "Discriminator", "Distill"]


@distillkit.hookimpl
def register_losses(register):
    register(Adversarial)
    register(Distill)


@distillkit.hookimpl
def register_critics(register):
    register(Discriminator)
