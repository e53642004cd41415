"""Frozen encoders of the discriminator's conditioning: the prompt and the real image.

ADD §3.2 conditions the discriminator heads on two vectors (Table 1b: both together are best, the image
alone beats the text alone):

* a text embedding c_text of the prompt — the paper uses an OpenCLIP ViT-g-14 text encoder; as a
  weight-free alternative, the diffusion model's *own* text embedding can be used (SDXL's pooled
  OpenCLIP-bigG projection; for SD1.5, which has no pooled vector, the mean of CLIP-L's last hidden
  states — every padding token there has attended to the whole prompt);
* an image embedding c_img — the CLS embedding of a DINOv2 ViT-L applied to the **real** image x0 the
  student's input was noised from, so the discriminator judges whether the sample is a plausible
  denoising of *that* image (it is shared by the real and the fake branch).

Both are L2-normalised so neither dominates the concatenation [c_text, c_img] before each head's
linear projection. Both run under ``no_grad``: they are constants of the step, not gradient paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

from distillkit.errors import ModelLoadError
from distillkit.utils import seeded

from distillkit_add.features import RANDOM_INIT_SEED, FeatureNetwork, weights_problem

if TYPE_CHECKING:  # pragma: no cover
    from distillkit.models.backbone import Backbone
    from distillkit.models.conditioning import Conditioning

#: the LAION checkpoint ADD's discriminator text encoder was trained as (the paper's CLIP-ViT-g-14)
KNOWN_TAGS = {"ViT-g-14": "laion2b_s34b_b88k"}


def open_clip_text_problem(name: str, weights: Optional[str], allow_random_init: bool, key: str) -> Optional[str]:
    tag = KNOWN_TAGS.get(name)
    source = f"open_clip: {name}" + (f" {tag}" if tag else "")
    return weights_problem(f"OpenCLIP {name} text encoder", source, weights, allow_random_init, key)


class OpenCLIPTextEncoder(torch.nn.Module):
    """The text tower of an OpenCLIP model (ADD: ViT-g-14), loaded from a local checkpoint file.

    open_clip builds both towers from one config and loads one checkpoint; the vision tower is dropped
    right after loading so only the text half stays in memory for training.
    """

    def __init__(self, name: str = "ViT-g-14", weights: Optional[str] = None, *, allow_random_init: bool = False,
                 field: str = "text_encoder_weights"):
        super().__init__()
        import open_clip

        problem = open_clip_text_problem(name, weights, allow_random_init, field)
        if problem:
            raise ModelLoadError(problem)
        try:
            with seeded(RANDOM_INIT_SEED):
                model = open_clip.create_model(name, pretrained=str(weights) if weights else None,
                                               require_pretrained=weights is not None)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one readable line
            raise ModelLoadError(f"{field}: could not load the OpenCLIP {name} checkpoint {weights!r} "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        model.visual = None
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.dim = int(model.text_projection.shape[-1]) if model.text_projection is not None else \
            int(model.transformer.width)

    def train(self, mode: bool = True) -> "OpenCLIPTextEncoder":
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str], cond: "Conditioning | None" = None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts)).to(device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class BackboneTextEncoder(torch.nn.Module):
    """The diffusion model's own prompt embedding: no extra weights, already computed for the step."""

    def __init__(self, backbone: "Backbone", resolution: int):
        super().__init__()
        probe = backbone.empty_conditioning(1, resolution)
        self.dim = int(self._pool(probe).shape[-1])

    @staticmethod
    def _pool(cond: "Conditioning") -> torch.Tensor:
        return cond.pooled if cond.pooled is not None else cond.embeds.mean(dim=1)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str], cond: "Conditioning | None" = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("text_encoder = 'backbone' embeds the step's conditioning; none was given")
        return F.normalize(self._pool(cond).detach().float(), dim=-1)


class ImageEncoder(torch.nn.Module):
    """CLS embedding of a frozen ViT on the real image in [-1, 1] (ADD: DINOv2 ViT-L/14)."""

    def __init__(self, network: FeatureNetwork):
        super().__init__()
        self.network = network
        self.dim = network.embed_dim

    @torch.no_grad()
    def forward(self, real_pixels: torch.Tensor) -> torch.Tensor:
        x01 = (real_pixels.detach().float() + 1) / 2
        return F.normalize(self.network.embed(x01).float(), dim=-1)
