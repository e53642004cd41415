"""Score distillation (SDS, NFSD, VSD, DMD2) as student objectives for distillkit.

Registered through the ``distillkit`` entry-point group (entry point ``sds``), exactly like a third-party
plugin:

* ``sds.sds`` — Score Distillation Sampling (DreamFusion), teacher only;
* ``sds.nfsd`` — Noise-Free Score Distillation, teacher only (prompt, empty and negative branches);
* ``sds.vsd`` — Variational Score Distillation (ProlificDreamer), with a ``core.fake_score`` critic;
* ``sds.dmd2`` — DMD2's distribution matching, with a ``core.fake_score`` critic;
* ``sds.dmd2_gan`` — DMD2's diffusion GAN: a ``core.gan_head`` on the same fake score's bottleneck.

The critics are the core's (shared with the SiD plugin); the weightings w(t) and the NFSD direction are
the core's :mod:`distillkit.diffusion.score_weights` (shared with ADD). The maths is in
:mod:`distillkit_sds.functional`; ``docs/sds.md`` lists each method's conventions.
"""

from __future__ import annotations

import distillkit

from distillkit_sds.dmd2 import DMD2, DMD2GAN
from distillkit_sds.sds import NFSD, SDS
from distillkit_sds.vsd import VSD

__all__ = ["DMD2", "DMD2GAN", "NFSD", "SDS", "VSD"]


@distillkit.hookimpl
def register_losses(register):
    for loss in (SDS, NFSD, VSD, DMD2, DMD2GAN):
        register(loss)
