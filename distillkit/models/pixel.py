"""Pixel-space diffusion: an SD1.5-shaped model whose "latents" are the images themselves.

No diffusers pipeline exists for it, so a saved model is a folder of component folders (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) plus ``distillkit_pixel.json``, which plays the
role of ``model_index.json``: it marks the folder as a pixel model and names each component's class,
and loading checks those names so a folder written for other classes fails clearly instead of loading
wrong weights. It exists so methods can be tested and studied without a VAE in the loop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from distillkit.errors import ModelLoadError
from distillkit.models.loading import is_local, read_json
from distillkit.models.sd15 import SD15Backbone

MANIFEST = "distillkit_pixel.json"
#: the class each component folder must hold, as [library, class name] (names: importing the libraries
#: here would make every command that registers model families pay for diffusers and transformers)
COMPONENT_CLASSES: dict[str, list[str]] = {"tokenizer": ["transformers", "CLIPTokenizer"],
                                           "text_encoder": ["transformers", "CLIPTextModel"],
                                           "unet": ["diffusers", "UNet2DConditionModel"]}


def _library_and_class(obj_or_cls) -> list[str]:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return [cls.__module__.split(".")[0], cls.__name__]


def write_pixel_folder(path: str | os.PathLike, *, tokenizer, text_encoder, unet, scheduler) -> Path:
    """Write the layout :class:`PixelBackbone` loads: one ``save_pretrained`` folder per component."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    components = {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "scheduler": scheduler}
    for name, component in components.items():
        kwargs = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
        component.save_pretrained(out / name, **kwargs)
    manifest = {"_class_name": PixelBackbone.__name__, "family": PixelBackbone.family}
    manifest.update({name: _library_and_class(c) for name, c in components.items()})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def check_manifest(source: str) -> None:
    """Fail unless ``source`` is a local folder written by :func:`write_pixel_folder` for these classes."""
    if not is_local(source):
        raise ModelLoadError(f"pixel models load from a local folder only, got hub id {source!r}; "
                             f"expected a folder with {MANIFEST}")
    manifest_path = Path(source) / MANIFEST
    if not manifest_path.is_file():
        raise ModelLoadError(f"{source!r} is not a pixel model folder: it has no {MANIFEST} "
                             f"(write one with PixelBackbone.save_pipeline or distillkit.testing.build_tiny_pixel)")
    manifest = read_json(manifest_path)
    wrong = [f"{name}: folder holds {manifest.get(name)}, expected {expected}"
             for name, expected in COMPONENT_CLASSES.items() if manifest.get(name) != expected]
    if wrong:
        raise ModelLoadError(f"{manifest_path} names components this loader cannot load: " + "; ".join(wrong))


class PixelBackbone(SD15Backbone):
    """SD1.5 with the VAE replaced by the identity: diffusion space *is* pixel space in [-1, 1].

    LoRA files are written in SD1.5's format (``pipeline_class`` serves only as their writer here);
    ``UNet2DConditionModel.load_lora_adapter(path, prefix="unet")`` reads them back.
    """

    family = "pixel"
    spatial_factor = 1
    folders: ClassVar[tuple[str, ...]] = ("tokenizer", "text_encoder", "unet", "scheduler")

    @classmethod
    def _load_parts(cls, source: str, *, dtype: torch.dtype, revision: str | None,
                    variant: str | None) -> dict[str, Any]:
        check_manifest(source)
        return super()._load_parts(source, dtype=dtype, revision=revision, variant=variant)

    @classmethod
    def _load_vae(cls, source: str, *, dtype: torch.dtype, revision: str | None, variant: str | None):
        return None

    def save_pipeline(self, unet, path: str | os.PathLike, scheduler=None) -> None:
        """The pixel folder layout with ``unet`` (LoRA merged into a copy); reload with ``from_pretrained``."""
        from distillkit.models.adapters import standalone_unet

        write_pixel_folder(path, tokenizer=self.tokenizer, text_encoder=self.text_encoder,
                           unet=standalone_unet(unet), scheduler=scheduler or self.scheduler)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The identity, and the same tensor: gradients pass straight through."""
        return x
