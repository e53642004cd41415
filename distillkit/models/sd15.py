"""Stable Diffusion 1.5: one CLIP text encoder, a ×8 VAE, an ε- or v-prediction UNet.

This class is also the shared implementation of the other built-in families: SDXL adds a second text
encoder and micro-conditioning on top of it, and the pixel family is this model without a VAE. Each
of them overrides only the hooks that differ (``_load_parts``, ``_added_conditions``,
``_pipeline_components``...), so loading, freezing, dtype casts and saving exist once.
"""

from __future__ import annotations

import copy
import os
from typing import Any, ClassVar, Sequence

import torch

from distillkit.diffusion import NoiseSchedule, Prediction
from distillkit.models.backbone import Backbone, UNetFeatures
from distillkit.models.conditioning import Conditioning
from distillkit.models.loading import (LazyClass, check_source, load_component, load_scheduler, load_tokenizer,
                                       resolve_dtype)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """No gradients and eval mode: frozen parts must neither train nor change under dropout."""
    return module.requires_grad_(False).eval()


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a network computes in: its first floating parameter's (works through peft/DDP wrappers)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class _StopAfterBottleneck(Exception):
    """Raised from the mid block's forward hook: the decoder's output is not needed."""


def encoder_features(unet, run, dtype: torch.dtype) -> UNetFeatures:
    """Run ``run()`` (a forward pass of a diffusers ``UNet2DConditionModel``, or a ref to one) and collect
    the outputs of its down blocks and mid block, stopping the pass after the mid block.

    Forward hooks rather than a re-implementation of the UNet's forward: time embeddings, SDXL's added
    conditions and peft adapters all keep working exactly as in a full call.
    """
    from distillkit.models.adapters import unwrap

    module = unwrap(unet)
    down: list[torch.Tensor] = []
    mid: list[torch.Tensor] = []

    def keep_down(_m, _inputs, output):
        down.append((output[0] if isinstance(output, tuple) else output).to(dtype))

    def keep_mid_and_stop(_m, _inputs, output):
        mid.append(output.to(dtype))
        raise _StopAfterBottleneck

    hooks = [block.register_forward_hook(keep_down) for block in module.down_blocks]
    if module.mid_block is not None:
        hooks.append(module.mid_block.register_forward_hook(keep_mid_and_stop))
    try:
        run()
    except _StopAfterBottleneck:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return UNetFeatures(down=down, mid=mid[0] if mid else down[-1])


def as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    """A single string is one prompt, not a sequence of one-character prompts."""
    return [prompts] if isinstance(prompts, str) else list(prompts)


class SD15Backbone(Backbone):
    family = "sd15"
    spatial_factor = 8
    #: component folders a source must have (checked before anything loads)
    folders: ClassVar[tuple[str, ...]] = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
    #: the diffusers pipeline a saved folder is meant for; also the writer of LoRA files
    pipeline_class: ClassVar[type] = LazyClass("diffusers", "StableDiffusionPipeline")  # imported on use

    def __init__(self, *, tokenizer, text_encoder: torch.nn.Module, vae: torch.nn.Module | None,
                 unet: torch.nn.Module, scheduler, dtype: torch.dtype = torch.float32):
        self.tokenizer = tokenizer
        self.text_encoder = freeze(text_encoder)
        self.vae = None if vae is None else freeze(vae)
        self.teacher_unet = freeze(unet)
        #: the scheduler as the source configured it; saved pipelines keep it
        self.scheduler = scheduler
        from diffusers import DDPMScheduler

        # Training maths always uses DDPM's ᾱ from the same config, whatever sampler the folder ships.
        self.schedule = NoiseSchedule.from_scheduler(DDPMScheduler.from_config(scheduler.config))
        self.prediction_type = scheduler.config.prediction_type
        self.dtype = dtype
        self.device = next(unet.parameters()).device
        self._empty_cache: dict[tuple[str, int], Conditioning] = {}

    # -- loading / saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, dtype: str | torch.dtype = torch.float32,
                        revision: str | None = None, variant: str | None = None,
                        device: str | torch.device = "cpu") -> "SD15Backbone":
        source = os.fspath(source)
        dtype = resolve_dtype(dtype)
        check_source(source, cls.folders)
        parts = cls._load_parts(source, dtype=dtype, revision=revision, variant=variant)
        backbone = cls(**parts, dtype=dtype).to(device)
        backbone.source = {"source": source, "revision": revision, "variant": variant}
        return backbone

    @classmethod
    def recipe_problems(cls, recipe) -> list:
        """``data.resolution`` against the VAE factor and UNet depth, ``student.timesteps`` against the
        schedule's length, read from a local model folder's configs (for SDXL and pixel too)."""
        from distillkit.recipe.checks import diffusers_folder_problems

        return diffusers_folder_problems(recipe, spatial_factor=cls.spatial_factor, has_vae="vae" in cls.folders,
                                         family=cls.family)

    def load_unet(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The teacher UNet loaded afresh in ``dtype``: a student trained in fp32 must start from the
        original weights, not from the bf16/fp16 rounding the frozen teacher is held in."""
        source = getattr(self, "source", None)
        if next(self.teacher_unet.parameters()).dtype == dtype:
            return copy.deepcopy(self.teacher_unet)
        if source is None:
            return copy.deepcopy(self.teacher_unet).to(dtype)
        from diffusers import UNet2DConditionModel

        unet = load_component(UNet2DConditionModel, source["source"], "unet", dtype=dtype,
                              revision=source["revision"], variant=source["variant"])
        return unet.to(self.device)

    @classmethod
    def _load_parts(cls, source: str, *, dtype: torch.dtype, revision: str | None,
                    variant: str | None) -> dict[str, Any]:
        """Every constructor argument but ``dtype``, loaded from ``source``. The tokenizer goes first: it
        is where an unreachable hub shows up, and it is the cheapest thing to fail on."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        weights = {"dtype": dtype, "revision": revision, "variant": variant}
        return {
            "tokenizer": load_tokenizer(CLIPTokenizer, source, "tokenizer", revision=revision),
            "text_encoder": load_component(CLIPTextModel, source, "text_encoder", **weights),
            "vae": cls._load_vae(source, **weights),
            "unet": load_component(UNet2DConditionModel, source, "unet", **weights),
            "scheduler": load_scheduler(source, revision=revision),
        }

    @classmethod
    def _load_vae(cls, source: str, *, dtype: torch.dtype, revision: str | None, variant: str | None):
        from diffusers import AutoencoderKL

        return load_component(AutoencoderKL, source, "vae", dtype=dtype, revision=revision, variant=variant)

    def _pipeline_components(self, unet: torch.nn.Module) -> dict[str, Any]:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": unet,
                "scheduler": self.scheduler}

    def _pipeline_options(self) -> dict[str, Any]:
        # A distilled model is not a safety-checked release; the folder must load without the checker.
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def _pipeline(self, unet: torch.nn.Module):
        return self.pipeline_class(**self._pipeline_components(unet), **self._pipeline_options())

    def save_pipeline(self, unet, path: str | os.PathLike, scheduler=None) -> None:
        """A full diffusers folder with ``unet`` (a module or a role's ref; an active LoRA adapter is folded
        into a copy) in place of the teacher's. ``scheduler`` replaces the teacher's."""
        from distillkit.models.adapters import standalone_unet

        pipe = self._pipeline(standalone_unet(unet))
        # Every component in float32: diffusers loads a saved model as float32 unless told otherwise while
        # transformers keeps the saved dtype, so a bf16 text encoder beside a UNet would not run after
        # a plain from_pretrained. Users pick their inference dtype with torch_dtype=.
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and any(p.dtype != torch.float32 for p in module.parameters()):
                setattr(pipe, name, copy.deepcopy(module).float())
        if scheduler is not None:
            pipe.scheduler = scheduler
        pipe.save_pretrained(os.fspath(path), safe_serialization=True)

    def save_lora(self, unet, path: str | os.PathLike) -> None:
        """``pytorch_lora_weights.safetensors`` of the adapter a role's ref (``UNetRef(unet, name)``) calls
        with, in diffusers' key format and with the adapter config as metadata (so ``load_lora_weights``
        restores the same rank and alpha). Other roles' adapters on the same UNet are not written."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        adapter, module = getattr(unet, "adapter", None), getattr(unet, "module", unet)
        if adapter is None:
            raise ValueError("save_lora needs a role's ref to a LoRA adapter (UNetRef(unet, name)); use save_pipeline")
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module, adapter_name=adapter))
        self.pipeline_class.save_lora_weights(os.fspath(path), unet_lora_layers=layers,
                                              unet_lora_adapter_metadata=module.peft_config[adapter].to_dict(),
                                              safe_serialization=True)

    # -- conditioning -------------------------------------------------------------------------
    def _token_ids(self, tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
        # Tokenizers saved without model_max_length report a huge one; the encoder's positions bound it.
        length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
        ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: str | Sequence[str], resolution: int) -> Conditioning:
        """CLIP's last hidden states, padded to 77 tokens: (B, 77, D). ``resolution`` is unused in SD1.5."""
        ids = self._token_ids(self.tokenizer, self.text_encoder, as_prompt_list(prompts))
        return Conditioning(embeds=self.text_encoder(ids).last_hidden_state)

    def _empty_prompt(self, resolution: int) -> Conditioning:
        return self.encode_prompts([""], resolution)

    def empty_conditioning(self, batch: int, resolution: int) -> Conditioning:
        """Encoded once per (device, resolution): every CFG step needs it and it never changes."""
        key = (str(self.device), int(resolution))
        if key not in self._empty_cache:
            self._empty_cache[key] = self._empty_prompt(resolution)
        return self._empty_cache[key].expand(batch)

    # -- diffusion space <-> pixels -------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.teacher_unet.config.in_channels

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents of pixels in [-1, 1], in ``pixels``' dtype.

        The posterior *mean*, not a sample: the same image then always gives the same latents (across
        epochs, ranks and reruns), and SD's VAE posterior is so narrow that sampling adds no useful noise.
        """
        vae_dtype = module_dtype(self.vae)
        latents = self.vae.encode(pixels.to(device=self.device, dtype=vae_dtype)).latent_dist.mean
        return (latents * self.vae.config.scaling_factor).to(pixels.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (about [-1, 1], unclamped so gradients stay) from scaled latents; keeps the graph.

        Runs in the VAE's dtype; the result comes back in ``x``'s dtype.
        """
        vae_dtype = module_dtype(self.vae)
        pixels = self.vae.decode((x / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return pixels.to(x.dtype)

    # -- the denoiser call ----------------------------------------------------------------------
    def _added_conditions(self, cond: Conditioning, dtype: torch.dtype) -> dict[str, Any]:
        """Extra UNet keyword arguments beyond ``encoder_hidden_states`` (none for SD1.5)."""
        return {}

    def _unet_call(self, unet, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw UNet output, per-sample t): the call shared by :meth:`denoise` and :meth:`features`."""
        dtype = module_dtype(unet)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x_t.shape[0])
        cond = cond.to(device=x_t.device)
        output = unet(x_t.to(dtype), t, encoder_hidden_states=cond.embeds.to(dtype),
                      **self._added_conditions(cond, dtype), return_dict=False)[0]
        return output, t

    def denoise(self, unet: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> Prediction:
        """One UNet call at the UNet's own dtype; the output comes back in ``x_t``'s dtype, tagged with
        this model's parameterisation and the schedule's (α_t, σ_t)."""
        output, t = self._unet_call(unet, x_t, t, cond)
        alpha, sigma = self.schedule.coefficients(t, x_t)
        return Prediction(output.to(x_t.dtype), self.prediction_type, x_t, alpha, sigma)

    supports_features = True

    def features(self, unet, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> UNetFeatures:
        """Each down block's output and the mid block's (the bottleneck), in ``x_t``'s dtype.

        The pass stops right after the mid block: the decoder half never runs, which is about half of
        the UNet's cost. Gradients flow through ``x_t`` (and any trainable adapter) as in ``denoise``.
        """
        return encoder_features(unet, lambda: self._unet_call(unet, x_t, t, cond), x_t.dtype)

    # -- devices ----------------------------------------------------------------------------------
    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        modules = {"text_encoder": self.text_encoder, "vae": self.vae, "teacher_unet": self.teacher_unet}
        return {name: m for name, m in modules.items() if m is not None}

    def to(self, device) -> "SD15Backbone":
        device = torch.device(device)
        for module in self.frozen_modules().values():
            module.to(device)
        self.device = device
        self._empty_cache.clear()
        return self
