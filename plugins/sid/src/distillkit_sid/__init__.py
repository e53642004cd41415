"""Score identity Distillation for distillkit (entry point ``sid``), registered like any third-party plugin:

* ``sid.sid`` — SiD / SiD-LSG's generator loss and its fake score's training (``core.fake_score``), with
  the guidance strategies LSG, Zero-CFG and Anti-CFG as one key (``params.guidance``); one-step or
  few-step through the student's settings (``student.input = "noise"``, ``first_input = "sigma_noise"``,
  timesteps from t_init = 625);
* ``sid.gan`` — the diffusion-GAN of SiDA / few-step SiD: the fake score's bottleneck, channel mean, as
  the discriminator (needs real images);
* ``sid.gan_head`` — the same with DMD2's conv head (``core.gan_head``) on that bottleneck.

The formulas are pure functions in :mod:`distillkit_sid.functional`; ``docs/sid.md`` explains the
conventions and every place where the papers and the authors' code differ.
"""

from __future__ import annotations

import distillkit

from distillkit_sid.gan import DiffusionGAN, DiffusionGANHead
from distillkit_sid.losses import SiD

__all__ = ["DiffusionGAN", "DiffusionGANHead", "SiD"]


@distillkit.hookimpl
def register_losses(register):
    register(SiD)
    register(DiffusionGAN)
    register(DiffusionGANHead)
