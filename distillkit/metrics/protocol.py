"""Evaluation protocols: what an FID or CLIP score was measured against, so numbers are comparable.

Published text-to-image numbers differ by protocol far more than by method: COCO-2014 30k vs COCO-2017
5k, images resized to 256 or kept at 512, CLIP ×100 or not, ViT-g-14 or ViT-L-14. Every number
``distillkit eval`` prints or saves carries its :class:`Protocol`, and the presets reproduce the
common ones:

* ``add-coco2017-5k`` — the ADD paper's ablations (Table 1): 5,000 captions of COCO-2017 val (one per
  image), images generated at 512² and passed to Inception as they are, FID against those 5,000 val
  images; CLIP score with OpenCLIP ViT-g-14 (LAION-2B), reported as a cosine (0.3xx, not ×100).
* ``gigagan-coco2014-30k-256`` — the zero-shot COCO benchmark of GigaGAN, used by SiD-LSG and DMD2:
  30,000 captions drawn from COCO-2014 val, generated images downsampled to 256² before Inception, FID
  against the val images at 256²; CLIP score with ViT-g-14 as a cosine.

Inception is torch-fidelity's ``inception-v3-compat`` (the TensorFlow FID network, pool3, 2048-d);
resizing to 256 uses PIL's bicubic filter (antialiased), the choice clean-fid recommends; Inception
then resizes to 299² itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

FID_FEATURES = "Inception-v3 pool3, 2048-d (torch-fidelity inception-v3-compat, TF FID weights)"
RESIZE_FILTER = "PIL bicubic"


@dataclass(frozen=True)
class Protocol:
    name: str
    reference: str  # the reference images and captions, in words
    count: int  # generated images (and captions)
    resolution: int  # generation resolution
    resize: Optional[int] = None  # side the generated and reference images are resized to before features
    features: str = FID_FEATURES
    clip_model: str = "ViT-g-14"
    clip_pretrained: str = "laion2b_s34b_b88k"
    clip_scale: float = 1.0  # 100 for the ×100 convention
    caption_choice: str = "one caption per image, first listed; a seeded random subset when there are more"

    def with_(self, **changes) -> "Protocol":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resize_filter"] = RESIZE_FILTER if self.resize else "none"
        d["clip"] = f"OpenCLIP {self.clip_model} ({self.clip_pretrained}), cosine x {self.clip_scale:g}, clamped at 0"
        return d

    def describe(self) -> str:
        size = f"{self.resolution}px" + (f" -> {self.resize}px" if self.resize else "")
        return (f"{self.name}: {self.count} images at {size} vs {self.reference}; FID {self.features}; "
                f"CLIP {self.clip_model} x{self.clip_scale:g}")


PRESETS: dict[str, Protocol] = {
    "add-coco2017-5k": Protocol(
        name="add-coco2017-5k", reference="COCO-2017 val (5,000 images, one caption each)", count=5000,
        resolution=512, resize=None),
    "gigagan-coco2014-30k-256": Protocol(
        name="gigagan-coco2014-30k-256", reference="COCO-2014 val (30,000 random captions; val images at 256px)",
        count=30000, resolution=512, resize=256),
}


def preset(name: str) -> Protocol:
    from distillkit.errors import UsageError

    if name not in PRESETS:
        raise UsageError(f"unknown protocol preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
