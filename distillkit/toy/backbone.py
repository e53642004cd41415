"""The toy world as a model family: ``toy`` (neural teacher) and ``toy_exact`` (exact teacher).

Both load the same folder (:mod:`distillkit.toy.folder`) and differ only in who teaches:

* ``toy``: the folder's trained UNet is the teacher, the student's starting weights and the frozen
  base that LoRA roles attach adapters to — the situation of every real distillation.
* ``toy_exact``: the teacher is :class:`~distillkit.toy.exact.ExactDenoiser`, the closed-form posterior
  mean; the student still starts from the folder's UNet (``load_unet``) and LoRA roles still attach to
  it (``base_unet``). It separates what a method does from what the teacher's own errors do.

Diffusion space is pixel space (3×16×16 in [-1, 1]; ``encode_images``/``decode`` are the identity).
The prompt is encoded by table lookup: each prompt of the world has a fixed embedding (1 token), the
empty prompt is zeros, and a prompt the world does not know is an error that lists the ones it does.
"""

from __future__ import annotations

import copy
import os
from typing import ClassVar, Sequence

import torch

from distillkit.diffusion import NoiseSchedule, Prediction
from distillkit.errors import ModelLoadError, UsageError
from distillkit.models.backbone import Backbone, UNetFeatures
from distillkit.models.conditioning import Conditioning
from distillkit.models.loading import LazyClass
from distillkit.toy.exact import ExactDenoiser
from distillkit.toy.folder import has_unet_weights, read_scheduler, read_unet, read_world, write_toy_folder
from distillkit.toy.world import World


def _module_dtype(module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _unwrap(unet):
    from distillkit.models.adapters import unwrap

    return unwrap(unet)


class ToyBackbone(Backbone):
    """The toy world with its trained UNet as the teacher."""

    family = "toy"
    spatial_factor = 1
    supports_features = True
    #: whether the teacher is the closed-form one (``toy_exact``)
    exact_teacher: ClassVar[bool] = False

    def __init__(self, world: World, unet: torch.nn.Module, scheduler, dtype: torch.dtype = torch.float32):
        from diffusers import DDPMScheduler

        self.world = world
        self.scheduler = scheduler
        self.schedule = NoiseSchedule.from_scheduler(DDPMScheduler.from_config(scheduler.config))
        self.prediction_type = scheduler.config.prediction_type
        self.unet = unet.requires_grad_(False).eval()
        self.exact = ExactDenoiser(world, self.schedule, self.prediction_type)  # speaks the UNet's parameterisation
        self.teacher_unet = self.exact if self.exact_teacher else self.unet
        self.dtype = dtype
        self.device = next(unet.parameters()).device
        self.source: dict | None = None

    # -- loading / saving ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source, *, dtype=torch.float32, revision=None, variant=None,
                        device="cpu") -> "ToyBackbone":
        from distillkit.models.loading import resolve_dtype

        source = os.fspath(source)
        dtype = resolve_dtype(dtype)
        world = read_world(source)
        if not cls.exact_teacher and not has_unet_weights(source):
            raise ModelLoadError(f"{source!r} is a toy world folder without trained UNet weights, so it has no "
                                 f"neural teacher: train one with `distillkit teach recipes/toy_teacher.toml`, use "
                                 f"the shipped distillkit/toy/assets/teacher, or set model.family = \"toy_exact\"")
        backbone = cls(world, read_unet(source, dtype), read_scheduler(source), dtype=dtype).to(device)
        backbone.source = {"source": source, "revision": revision, "variant": variant}
        return backbone

    @classmethod
    def recipe_problems(cls, recipe) -> list:
        """Without loading a network: the folder exists and is a toy folder (with a trained UNet for
        ``toy``), ``data.resolution`` is the world's, and every sample/data prompt is one of the world's."""
        from pathlib import Path

        from distillkit.toy.folder import MANIFEST

        folder = Path(recipe.model.pretrained)
        if not (folder / MANIFEST).is_file():
            return [("model.pretrained", f"{str(folder)!r} is not a toy model folder (no {MANIFEST}); use "
                                         f"distillkit/toy/assets/teacher or a folder written by distillkit teach")]
        problems = []
        if not cls.exact_teacher and not has_unet_weights(folder):
            problems.append(("model.family", f"'toy' needs a trained UNet, and {str(folder)!r} holds only the world: "
                                             f"use 'toy_exact', or train a teacher with distillkit teach"))
        import json

        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        size = manifest.get("image_shape", [3, 16, 16])[-1]
        if recipe.data.resolution != size:
            problems.append(("data.resolution", f"{recipe.data.resolution}, but the toy world's images are "
                                                f"{size}x{size}: set it to {size}"))
        known = manifest.get("prompts", [])
        for field, prompts in (("sample.prompts", recipe.sample.prompts),
                               ("data.prompts", recipe.data.prompts if isinstance(recipe.data.prompts, list) else [])):
            unknown = [p for p in prompts if p and p not in known]
            if unknown:
                problems.append((field, f"{unknown} are not prompts of the toy world; it knows {known}"))
        return problems

    def load_unet(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The folder's UNet afresh in ``dtype`` (full precision even when the frozen copy is bf16)."""
        if _module_dtype(self.unet) == dtype:
            return copy.deepcopy(self.unet)
        if self.source is None:
            return copy.deepcopy(self.unet).to(dtype)
        return read_unet(self.source["source"], dtype).to(self.device)

    def save_pipeline(self, unet, path, scheduler=None) -> None:
        """A toy folder with ``unet`` (a module or a role's ref; an active adapter folded into a copy) as
        its UNet, in float32, loadable by either toy family. The toy world has no diffusers pipeline, so
        ``scheduler`` (an export's few-step scheduler) is not written: the folder keeps the training one."""
        from distillkit.models.adapters import standalone_unet

        module = standalone_unet(unet)
        if _module_dtype(module) != torch.float32:
            module = copy.deepcopy(module).float()
        write_toy_folder(path, self.world, module, self.scheduler, family=self.family)

    #: the writer of LoRA files (diffusers' SD1.5 format), imported on use
    pipeline_class = LazyClass("diffusers", "StableDiffusionPipeline")

    def save_lora(self, unet, path) -> None:
        """Diffusers' LoRA file format; ``UNet2DConditionModel.load_lora_adapter(path, prefix="unet")`` reads it."""
        from distillkit.models.sd15 import SD15Backbone

        SD15Backbone.save_lora(self, unet, path)

    # -- conditioning ---------------------------------------------------------------------------------
    def _check_resolution(self, resolution: int) -> None:
        size = self.world.image_shape[-1]
        if int(resolution) != size:
            raise UsageError(f"this toy world's images are {size}x{size}; got resolution {resolution}: set "
                             f"data.resolution = {size} (or --resolution {size})")

    def encode_prompts(self, prompts: str | Sequence[str], resolution: int) -> Conditioning:
        """(B, 1, D) rows of the world's embedding table; "" is the empty prompt (zeros)."""
        self._check_resolution(resolution)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        unknown = sorted({p for p in prompts if p and p not in self.world.prompts})
        if unknown:
            raise UsageError(f"the toy world has no prompt(s) {unknown}; it knows {self.world.prompts} (and \"\" "
                             f"for no prompt): use those in data/sample prompts and --prompt")
        table = self.world.embeddings.to(self.device)
        zeros = torch.zeros_like(table[0])
        embeds = torch.stack([table[self.world.prompt_index(p)] if p else zeros for p in prompts])
        return Conditioning(embeds=embeds.to(self.dtype))

    def empty_conditioning(self, batch: int, resolution: int) -> Conditioning:
        return self.encode_prompts([""], resolution).expand(batch)

    # -- diffusion space <-> pixels ---------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.world.image_shape[0]

    def sample_shape(self, batch: int, resolution: int) -> tuple[int, ...]:
        self._check_resolution(resolution)
        return (batch, *self.world.image_shape)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The identity, and the same tensor: gradients pass straight through."""
        return x

    @property
    def base_unet(self) -> torch.nn.Module:
        """The trained UNet, whichever the teacher: LoRA adapters need weights to sit on."""
        return self.unet

    # -- the denoiser call ----------------------------------------------------------------------------
    def _unet_call(self, unet, x_t: torch.Tensor, t, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _module_dtype(unet)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x_t.shape[0])
        embeds = cond.to(device=x_t.device).embeds
        output = unet(x_t.to(dtype), t, encoder_hidden_states=embeds.to(dtype), return_dict=False)[0]
        return output, t

    def denoise(self, unet, x_t: torch.Tensor, t, cond: Conditioning) -> Prediction:
        """One call of a UNet, or of the exact teacher (computed in float64), returned in ``x_t``'s dtype."""
        output, t = self._unet_call(unet, x_t, t, cond)
        alpha, sigma = self.schedule.coefficients(t, x_t)
        return Prediction(output.to(x_t.dtype), self.prediction_type, x_t, alpha, sigma)

    def features(self, unet, x_t: torch.Tensor, t, cond: Conditioning) -> UNetFeatures:
        """Down-block and mid-block outputs of a UNet pass (it stops after the bottleneck)."""
        from distillkit.models.sd15 import encoder_features

        if isinstance(_unwrap(unet), ExactDenoiser):
            raise NotImplementedError("the exact toy teacher is computed in closed form and has no encoder "
                                      "features; take features from a UNet (the student's, a critic's, or "
                                      "backbone.base_unet)")
        return encoder_features(unet, lambda: self._unet_call(unet, x_t, t, cond), x_t.dtype)

    # -- devices --------------------------------------------------------------------------------------
    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        modules = {"unet": self.unet}
        if self.teacher_unet is not self.unet:
            modules["teacher_unet"] = self.teacher_unet
        return modules

    def to(self, device) -> "ToyBackbone":
        device = torch.device(device)
        self.unet.to(device)
        self.exact.to(device)
        self.device = device
        return self


class ToyExactBackbone(ToyBackbone):
    """The toy world with the closed-form posterior mean as the teacher (students still start from the UNet)."""

    family = "toy_exact"
    exact_teacher = True
