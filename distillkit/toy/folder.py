"""The toy model folder: a world, a small diffusers UNet, and the schedule, in one loadable directory.

Layout (no diffusers pipeline exists for the toy world, so ``distillkit_toy.json`` plays the role of
``model_index.json``, as in the pixel family)::

    distillkit_toy.json     marks the folder; prompts, how each component was rendered, format version
    world.safetensors       the mixture: means, stds, weights, component -> prompt, prompt shares, embeddings
    unet/                   UNet2DConditionModel.save_pretrained (config.json, and weights once trained)
    scheduler/              the DDPM scheduler config (SD's scaled-linear betas, ε-prediction)

A folder whose ``unet/`` holds only ``config.json`` is a *world folder*: the exact teacher works on it,
and the UNet it describes is built with random weights under a fixed seed — the starting point of
``distillkit teach``. The neural-teacher family refuses such a folder, so an untrained network can
never silently act as a teacher.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from distillkit.errors import ModelLoadError
from distillkit.toy.world import World

MANIFEST = "distillkit_toy.json"
WORLD_FILE = "world.safetensors"
FORMAT_VERSION = 1
#: seed of the random weights of a UNet folder that holds only a config (a world folder)
UNTRAINED_SEED = 0
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

#: the shipped toy UNet: 0.97 M parameters, cross-attention to the prompt embedding at the 4×4 level only
#: (attention at 8×8 doubled the cost of a step on a CPU; 32 channels at 16×16 cost twice as much again)
DEFAULT_UNET = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
#: SD1.5's training schedule: the toy world is diffused exactly as Stable Diffusion's latents are. The UNet
#: predicts v (SD2's parameterisation): with ε-prediction x̂0 = (x_t − σ ε̂)/α multiplies the network's error by
#: σ/α ≈ 15 at t = 999, and an ε-teacher trained for 1000 steps here had a per-pixel x0 error of 1.6 there
#: (DDIM: FD 1120 at 1 step, 123 at 4) where v-prediction's x̂0 = α x_t − σ v̂ passes the error through unamplified.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   prediction_type="v_prediction", clip_sample=False)


def default_scheduler(**overrides):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**SD_SCHEDULE, **overrides})


def new_unet(world: World, seed: int = UNTRAINED_SEED, **overrides):
    """A randomly initialised toy UNet sized for ``world`` (channels, resolution, embedding width)."""
    from diffusers import UNet2DConditionModel

    from distillkit.utils import seeded

    c, h, _ = world.image_shape
    config = {**DEFAULT_UNET, "sample_size": h, "in_channels": c, "out_channels": c,
              "cross_attention_dim": int(world.embeddings.shape[-1]), **overrides}
    with seeded(seed):
        return UNet2DConditionModel(**config)


def write_toy_folder(path: str | os.PathLike, world: World, unet=None, scheduler=None, *,
                     unet_overrides: dict | None = None, family: str = "toy") -> Path:
    """Write the layout the toy families load. Without ``unet`` only the config of a new one (the
    default architecture sized for the world, with ``unet_overrides``) is written: a world folder."""
    from safetensors.torch import save_file

    out = Path(path)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    for stale in UNET_WEIGHTS:  # a world folder written over a trained one must not keep old weights
        (out / "unet" / stale).unlink(missing_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in world.tensors().items()}, str(out / WORLD_FILE))
    if unet is not None:
        unet.save_pretrained(out / "unet", safe_serialization=True)
    else:
        new_unet(world, **(unet_overrides or {})).save_config(out / "unet")
    (scheduler or default_scheduler()).save_pretrained(out / "scheduler")
    manifest = {"_class_name": "ToyBackbone", "format_version": FORMAT_VERSION, "family": family,
                "trained_unet": unet is not None, **world.describe()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def _manifest(source: Path) -> dict[str, Any]:
    from distillkit.models.loading import read_json

    if not source.is_dir():
        what = "is a file, not a folder" if source.exists() else "does not exist"
        raise ModelLoadError(f"toy model folder {str(source)!r} {what}; expected a folder with {MANIFEST} "
                             f"(the shipped ones are distillkit/toy/assets/teacher and distillkit/toy/assets/world)")
    if not (source / MANIFEST).is_file():
        raise ModelLoadError(f"{str(source)!r} is not a toy model folder: it has no {MANIFEST} (write one with "
                             f"distillkit.toy.write_toy_folder, or use distillkit/toy/assets/teacher)")
    manifest = read_json(source / MANIFEST)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{source / MANIFEST} has format version {manifest.get('format_version')!r}; this "
                             f"distillkit reads version {FORMAT_VERSION}")
    return manifest


def has_unet_weights(source: str | os.PathLike) -> bool:
    return any((Path(source) / "unet" / name).is_file() for name in UNET_WEIGHTS)


def read_world(source: str | os.PathLike) -> World:
    """The world of a toy folder (the cheap part: no network is built)."""
    from safetensors.torch import load_file

    source = Path(source)
    manifest = _manifest(source)
    try:
        tensors = load_file(str(source / WORLD_FILE))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read {str(source / WORLD_FILE)!r}: {err}") from err
    return World.from_tensors(manifest["prompts"], tensors, manifest.get("components", ()))


def read_unet(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The folder's UNet: its trained weights, or (a world folder) random weights under a fixed seed."""
    from diffusers import UNet2DConditionModel

    from distillkit.models.loading import load_component, load_config
    from distillkit.utils import seeded

    source = os.fspath(source)
    if has_unet_weights(source):
        return load_component(UNet2DConditionModel, source, "unet", dtype=dtype)
    config = load_config(UNet2DConditionModel, source, "unet")
    with seeded(UNTRAINED_SEED):
        unet = UNet2DConditionModel.from_config(config)
    return unet if dtype == torch.float32 else unet.to(dtype)


def read_scheduler(source: str | os.PathLike):
    from distillkit.models.loading import load_scheduler

    return load_scheduler(os.fspath(source))
