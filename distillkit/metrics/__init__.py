"""Sample-quality metrics: the Fréchet distance (exact toy metrics live in :mod:`distillkit.toy.metrics`),
FID and CLIP score for Stable Diffusion models, and the protocols that make their numbers comparable.

Nothing here imports a feature network at import time: Inception (torch-fidelity) and CLIP (open_clip)
load on first use, from local weight files only.
"""

from distillkit.metrics.frechet import frechet_distance, frechet_to_reference, gaussian_stats

__all__ = ["frechet_distance", "frechet_to_reference", "gaussian_stats"]
