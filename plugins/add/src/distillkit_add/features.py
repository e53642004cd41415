"""Frozen vision transformers that give ADD's discriminator its per-layer token features.

ADD §3.2 (arXiv 2311.17042) builds its discriminator as in StyleGAN-T / Projected GANs: a frozen
pretrained feature network F (DINOv2 ViT-S/14 in the paper) and small trainable heads D_k on the token
features of several of its layers. StyleGAN-T's ``networks/vit_utils.py`` taps the outputs of blocks
[2, 5, 8, 11] plus the patch embedding (the token sequence entering the first block) — five heads —
and adds the CLS token to every patch token ("AddReadout") before the heads see them. This module does
exactly that for every network of ADD's Table 1 feature-network ablation.

Everything builds offline: architectures come from timm / open_clip with random weights, and pretrained
weights come only from a local file the recipe names (there is no hub on a training node and this
package never downloads). A random-init network is built under a fixed seed so every rank of a
multi-GPU run gets the *same* frozen network — otherwise each rank's discriminator would see different
features. Parameters are frozen (``requires_grad=False``, eval mode), but the forward pass keeps the
graph w.r.t. the input image: the generator's adversarial gradient flows through F (docs/methods.md, "Roles, phases").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from distillkit.errors import ModelLoadError
from distillkit.utils import seeded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: seed of every random-init frozen network (identical on all ranks and runs)
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class NetSpec:
    """How to build one frozen network and what it expects as input."""

    key: str
    label: str  # human name for messages
    library: Literal["timm", "open_clip", "tiny"]
    model_name: str  # timm / open_clip architecture name
    source: str  # where real weights come from, for the "download it elsewhere" message
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layers: tuple[int, ...]
    depth: int  # transformer blocks, so tapped layer indices can be checked before anything is built

    @property
    def needs_weights(self) -> bool:
        return self.library != "tiny"


NETWORKS: dict[str, NetSpec] = {
    spec.key: spec for spec in (
        NetSpec("dinov2_vits14", "DINOv2 ViT-S/14", "timm", "vit_small_patch14_dinov2",
                "timm: vit_small_patch14_dinov2.lvd142m", 224, IMAGENET_MEAN, IMAGENET_STD, (2, 5, 8, 11), 12),
        NetSpec("dinov2_vitl14", "DINOv2 ViT-L/14", "timm", "vit_large_patch14_dinov2",
                "timm: vit_large_patch14_dinov2.lvd142m", 224, IMAGENET_MEAN, IMAGENET_STD, (5, 11, 17, 23), 24),
        NetSpec("dino_vits16", "DINO ViT-S/16", "timm", "vit_small_patch16_224.dino",
                "timm: vit_small_patch16_224.dino", 224, IMAGENET_MEAN, IMAGENET_STD, (2, 5, 8, 11), 12),
        NetSpec("clip_vitb16", "CLIP ViT-B/16", "open_clip", "ViT-B-16",
                "open_clip: ViT-B-16, e.g. pretrained='openai'", 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                (2, 5, 8, 11), 12),
        NetSpec("clip_vitl14", "CLIP ViT-L/14", "open_clip", "ViT-L-14",
                "open_clip: ViT-L-14, e.g. pretrained='openai'", 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                (5, 11, 17, 23), 24),
        # A 4-block, 32-channel ViT at 32×32: the discriminator's mechanics on a CPU in milliseconds.
        NetSpec("tiny", "tiny test ViT", "tiny", "VisionTransformer(img_size=32, patch_size=8, embed_dim=32)",
                "none (always random)", 32, IMAGENET_MEAN, IMAGENET_STD, (1, 3), 4),
    )
}


def layers_problem(spec: NetSpec, layers: Sequence[int]) -> Optional[str]:
    """Why ``layers`` cannot be tapped on ``spec``'s network, or None.

    Checked from the spec's block count when the recipe is validated, so a typo fails ``distillkit
    validate`` instead of a run that has already loaded its models. Negative indices count from the
    end, as Python's (and the forward hooks') indexing does.
    """
    bad = [i for i in layers if not -spec.depth <= i < spec.depth]
    if not bad:
        return None
    return (f"{spec.label} has {spec.depth} blocks; cannot tap layers {bad}: use indices 0..{spec.depth - 1} "
            f"(or -{spec.depth}..-1 from the end)")


def weights_problem(label: str, source: str, weights: Optional[str], allow_random_init: bool,
                    key: str) -> Optional[str]:
    """One line saying what is wrong with a frozen network's weight file, or None.

    ``label`` names the network ("DINOv2 ViT-S/14"), ``source`` where its weights are published, ``key``
    the recipe field. A given path that does not exist is always a problem (a typo must not silently
    train on random features); no path at all is one unless random init was explicitly allowed.
    """
    if weights is None:
        if allow_random_init:
            return None
        return (f"{key}: no {label} weights file is set; download them on a machine with internet ({source}), "
                f"put the file on this machine and set {key.rsplit('.', 1)[-1]} = \"path/to/file\", "
                f"or set allow_random_init = true for a smoke test")
    if not Path(weights).is_file():
        return (f"{key}: {label} weights not found at {weights!r}; download them on a machine with internet "
                f"({source}) and put the file there, or set allow_random_init = true for a smoke test")
    return None


def spec_weights_problem(spec: NetSpec, weights: Optional[str], allow_random_init: bool, key: str) -> Optional[str]:
    """:func:`weights_problem` for a network of :data:`NETWORKS` (the tiny test net needs no file)."""
    if not spec.needs_weights:
        return None
    return weights_problem(spec.label, spec.source, weights, allow_random_init, key)


def _build_timm(spec: NetSpec, weights: Optional[str]) -> torch.nn.Module:
    import timm

    kwargs = {"num_classes": 0}
    if "dinov2" in spec.model_name:
        kwargs["img_size"] = spec.resolution  # timm's DINOv2 defaults to 518; weights are resampled
    if weights is None:
        with seeded(RANDOM_INIT_SEED):
            return timm.create_model(spec.model_name, pretrained=False, **kwargs)
    # timm's own checkpoint filter converts the original (facebookresearch) DINO/DINOv2 key layout and
    # resamples the position embedding to ``img_size``: a .pth from torch.hub or timm's safetensors both load.
    return timm.create_model(spec.model_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)},
                             **kwargs)


def _build_open_clip(spec: NetSpec, weights: Optional[str]) -> torch.nn.Module:
    import open_clip

    with seeded(RANDOM_INIT_SEED) if weights is None else contextlib.nullcontext():
        model = open_clip.create_model(spec.model_name, pretrained=str(weights) if weights else None,
                                       require_pretrained=weights is not None)
    return model.visual


def _build_tiny(spec: NetSpec, weights: Optional[str]) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    with seeded(RANDOM_INIT_SEED):
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0)


_BUILDERS = {"timm": _build_timm, "open_clip": _build_open_clip, "tiny": _build_tiny}


class FeatureNetwork(torch.nn.Module):
    """A frozen ViT that maps images in [0, 1] to token maps (B, C, N) at chosen blocks.

    ``forward`` resizes to the network's resolution (bilinear, antialiased — a 512² image is
    downsampled by more than 2×), normalises with the network's own mean/std, runs the ViT and returns
    one map per tap: the patch embedding first (if enabled), then each block in ``layers`` order.
    """

    def __init__(self, spec: NetSpec, model: torch.nn.Module, layers: Optional[Sequence[int]] = None,
                 use_patch_embed: bool = True):
        super().__init__()
        self.spec = spec
        self.model = model.requires_grad_(False).eval()
        self.resolution = spec.resolution
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if spec.library == "open_clip":
            self._batch_first = getattr(model.transformer, "batch_first", True)
            self._prefix = 1
            self.channels = model.transformer.width
            self.embed_dim = model.output_dim
        else:
            self._batch_first = True
            self._prefix = model.num_prefix_tokens
            self.channels = model.embed_dim
            self.embed_dim = model.num_features
        self.layers = list(spec.default_layers if layers is None else layers)
        if len(self._blocks) != spec.depth:  # the spec's depth is what recipes were validated against
            raise ValueError(f"{spec.label}: the built model has {len(self._blocks)} blocks, its spec says "
                             f"{spec.depth}")
        problem = layers_problem(spec, self.layers)
        if problem:
            raise ValueError(problem)
        self.use_patch_embed = use_patch_embed

    @property
    def _blocks(self) -> torch.nn.ModuleList:
        """The transformer blocks (a property, so they are not registered a second time as a submodule)."""
        return self.model.transformer.resblocks if self.spec.library == "open_clip" else self.model.blocks

    @property
    def num_taps(self) -> int:
        return len(self.layers) + int(self.use_patch_embed)

    def train(self, mode: bool = True) -> "FeatureNetwork":
        """Always eval: frozen means no dropout and no statistics updates, whatever the parent's mode."""
        return super().train(False)

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size → the network's resolution, normalised with its mean/std."""
        x = x01.float()  # resized in fp32: CPU has no bf16 antialiased resize, and it is cheap either way
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def _tokens(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, C) with prefix tokens → (B, C, N) patch tokens with the CLS readout added (StyleGAN-T)."""
        if not self._batch_first:
            seq = seq.transpose(0, 1)
        return (seq[:, self._prefix:] + seq[:, :1]).transpose(1, 2)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.spec.library == "open_clip" else self.model.forward_features(x)

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Token maps at every tap, differentiable w.r.t. ``x01``; the network's weights get no gradient."""
        captured: dict[int, torch.Tensor] = {}
        handles = []
        if self.use_patch_embed:
            def pre_hook(module, args):
                captured[-1] = args[0]
            handles.append(self._blocks[0].register_forward_pre_hook(pre_hook))
        for layer in dict.fromkeys(self.layers):
            def hook(module, args, output, layer=layer):
                captured[layer] = output[0] if isinstance(output, tuple) else output
            handles.append(self._blocks[layer].register_forward_hook(hook))
        try:
            self._run(self.preprocess(x01))
        finally:
            for h in handles:
                h.remove()
        order = ([-1] if self.use_patch_embed else []) + self.layers
        return [self._tokens(captured[i]) for i in order]

    @torch.no_grad()
    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        """One global vector per image: the final normalised CLS token (timm), the projected CLS (CLIP)."""
        out = self._run(self.preprocess(x01))
        return out if self.spec.library == "open_clip" else out[:, 0]


def build_feature_network(key: str, weights: Optional[str] = None, *, allow_random_init: bool = False,
                          layers: Optional[Sequence[int]] = None, use_patch_embed: bool = True,
                          field: str = "weights") -> FeatureNetwork:
    """Build the frozen network ``key`` from a local weights file (or random init where allowed).

    Raises :class:`~distillkit.errors.ModelLoadError` with the same message as ``check_assets`` when
    the file is missing, so a run that skipped validation still fails with the fix spelt out.
    """
    if key not in NETWORKS:
        raise ValueError(f"unknown feature network {key!r}; expected one of {sorted(NETWORKS)}")
    spec = NETWORKS[key]
    problem = spec_weights_problem(spec, weights, allow_random_init, field)
    if problem:
        raise ModelLoadError(problem)
    if weights is None or not spec.needs_weights:
        return FeatureNetwork(spec, _BUILDERS[spec.library](spec, None), layers, use_patch_embed)
    try:
        model = _BUILDERS[spec.library](spec, weights)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one readable line
        raise ModelLoadError(f"{field}: could not load {spec.label} weights from {weights!r} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]}); expected a checkpoint "
                             f"of {spec.source}") from exc
    return FeatureNetwork(spec, model, layers, use_patch_embed)
