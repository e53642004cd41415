"""CLIP score through open_clip, from a local checkpoint: mean max(cos(image, caption), 0) × scale.

torchmetrics' convention is 100·max(cos, 0); the ADD and SiD papers report the plain cosine (0.3xx).
The scale is part of the protocol, so the two never get mixed in one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from distillkit.errors import ModelLoadError


class CLIPScorer(torch.nn.Module):
    def __init__(self, model: str, weights: Optional[str | Path], device="cpu", allow_random_init: bool = False):
        super().__init__()
        import open_clip

        if weights is None and not allow_random_init:
            raise ModelLoadError(f"CLIP score needs local OpenCLIP {model} weights: pass --clip-weights FILE "
                                 f"(open_clip checkpoint, e.g. {model} laion2b_s34b_b88k downloaded elsewhere)")
        if weights is not None and not Path(weights).is_file():
            raise ModelLoadError(f"CLIP weights not found at {str(weights)!r}")
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=str(weights) if weights else None, require_pretrained=weights is not None)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load OpenCLIP {model} from {str(weights)!r}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        self.net = net.eval().requires_grad_(False).to(device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device = torch.device(device)

    @torch.no_grad()
    def cosines(self, images_uint8: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """(N,) cosine similarity of each image with its caption."""
        from PIL import Image

        pil = [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in images_uint8]
        pixels = torch.stack([self.preprocess(p) for p in pil]).to(self.device)
        tokens = self.tokenizer(list(captions)).to(self.device)
        a = torch.nn.functional.normalize(self.net.encode_image(pixels).float(), dim=-1)
        b = torch.nn.functional.normalize(self.net.encode_text(tokens).float(), dim=-1)
        return (a * b).sum(-1).double().cpu()


def clip_score(cosines: torch.Tensor, scale: float) -> float:
    return float(scale * cosines.clamp_min(0).mean())
