"""FID with torch-fidelity's Inception network, loaded from a local weights file only.

torch-fidelity would download its weights (and reads a given file with ``torch.load(weights_only=False)``,
which can run code from a pickle). Here the file is read by us — safetensors, or a ``.pth``/``.bin`` with
``weights_only=True`` — and handed to the network's constructor in place of its downloader, so nothing
is fetched and nothing is unpickled. The weights are torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (the TensorFlow FID Inception, converted), downloaded once
on a machine with internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional
from unittest import mock

import torch

from distillkit.errors import ModelLoadError
from distillkit.metrics.frechet import frechet_to_reference

INCEPTION_SOURCE = ("torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                    "(github.com/toshas/torch-fidelity/releases/download/v0.2.0/)")


def read_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a tensors-only pickle (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what} weights not found at {str(path)!r}; download {INCEPTION_SOURCE if 'Inception' in what else 'them'} "
                             f"on a machine with internet and pass the local file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one readable line
        raise ModelLoadError(f"could not read {what} weights from {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


class InceptionFeatures(torch.nn.Module):
    """pool3 features (N, 2048) of uint8 images (N, 3, H, W) of any size (resized to 299² inside)."""

    def __init__(self, weights: str | Path, device="cpu"):
        super().__init__()
        try:
            import torch_fidelity.feature_extractor_inceptionv3 as fi
        except ImportError:
            raise ModelLoadError("FID needs torch-fidelity: pip install 'distillkit[features]'") from None
        state = read_weights(weights, "Inception (FID)")
        try:
            with mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: state):
                self.net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        except RuntimeError as exc:  # wrong keys or shapes
            raise ModelLoadError(f"{str(weights)!r} is not torch-fidelity's Inception state dict: "
                                 f"{str(exc).splitlines()[0]}") from exc
        self.net.to(device)
        self.weights = str(weights)

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return self.net(images_uint8.to(device))[0].double().cpu()

    def features(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self(b) for b in batches])


def fid_from_features(features: torch.Tensor, ref_mean: torch.Tensor, ref_cov: torch.Tensor,
                      ref_cov_sqrt: Optional[torch.Tensor] = None) -> float:
    """FD between the Gaussian fitted to ``features`` (N, 2048) and the reference statistics
    (``ref_cov_sqrt``: Σ^½, when several evaluations share one reference)."""
    return frechet_to_reference(features, ref_mean, ref_cov, ref_cov_sqrt)


def save_stats(path: str | Path, mean: torch.Tensor, cov: torch.Tensor, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mu": mean.double().contiguous(), "sigma": cov.double().contiguous()}, str(path),
              metadata={k: str(v) for k, v in metadata.items()})
    return path


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("mu"), f.get_tensor("sigma"), dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not read reference statistics {str(path)!r} (expected safetensors with mu and "
                             f"sigma): {exc}") from exc


def stats_match(metadata: dict[str, str], expected: dict[str, str]) -> Optional[str]:
    """Why cached statistics do not fit the protocol (None when they do)."""
    for key, value in expected.items():
        if metadata.get(key) != str(value):
            return f"{key} is {metadata.get(key)!r}, the protocol needs {value!r}"
    return None
