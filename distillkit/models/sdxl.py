"""Stable Diffusion XL: SD1.5's machinery plus a second text encoder and micro-conditioning.

SDXL's UNet cross-attends to both CLIP encoders' *penultimate* hidden states, concatenated along the
feature dimension, and takes two added conditions: the second encoder's pooled projection and six
``time_ids`` (original size, crop top-left, target size). Distillation trains on un-cropped images at
the target resolution, so the ids are (H, W, 0, 0, H, W), as the pipeline uses at inference.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from distillkit.models.conditioning import Conditioning
from distillkit.models.loading import LazyClass, load_component, load_config, load_pipeline_config, load_tokenizer
from distillkit.models.sd15 import SD15Backbone, as_prompt_list, freeze


class SDXLBackbone(SD15Backbone):
    family = "sdxl"
    folders: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae",
                                          "unet", "scheduler")
    pipeline_class: ClassVar[type] = LazyClass("diffusers", "StableDiffusionXLPipeline")  # imported on use

    def __init__(self, *, tokenizer_2, text_encoder_2: torch.nn.Module, force_zeros_for_empty_prompt: bool = True,
                 **parts):
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = freeze(text_encoder_2)
        #: SDXL's convention: the unconditional branch is all zeros, not the encoded empty prompt
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        super().__init__(**parts)

    # -- loading / saving ---------------------------------------------------------------------
    @classmethod
    def _load_parts(cls, source: str, *, dtype: torch.dtype, revision: str | None,
                    variant: str | None) -> dict[str, Any]:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        parts = super()._load_parts(source, dtype=dtype, revision=revision, variant=variant)
        parts["tokenizer_2"] = load_tokenizer(CLIPTokenizer, source, "tokenizer_2", revision=revision)
        parts["text_encoder_2"] = load_component(CLIPTextModelWithProjection, source, "text_encoder_2",
                                                 dtype=dtype, revision=revision, variant=variant)
        config = load_pipeline_config(source, revision=revision)
        parts["force_zeros_for_empty_prompt"] = config.get("force_zeros_for_empty_prompt", True)
        return parts

    @classmethod
    def _load_vae(cls, source: str, *, dtype: torch.dtype, revision: str | None, variant: str | None):
        """SDXL's original VAE overflows to NaN in float16 and says so with ``force_upcast``; the SDXL
        pipeline then decodes in float32, and so do we: such a VAE stays float32 in a float16 run.
        (bfloat16 has float32's range and needs no upcast.) ``decode`` runs in the VAE's dtype."""
        from diffusers import AutoencoderKL

        config = load_config(AutoencoderKL, source, "vae", revision=revision)
        upcast = dtype == torch.float16 and config.get("force_upcast", True)  # diffusers' default is True
        return load_component(AutoencoderKL, source, "vae", dtype=torch.float32 if upcast else dtype,
                              revision=revision, variant=variant)

    def _pipeline_components(self, unet: torch.nn.Module) -> dict[str, Any]:
        return {**super()._pipeline_components(unet), "text_encoder_2": self.text_encoder_2,
                "tokenizer_2": self.tokenizer_2}

    def _pipeline_options(self) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt, "add_watermarker": False}

    # -- conditioning -------------------------------------------------------------------------
    def time_ids(self, batch: int, resolution: int) -> torch.Tensor:
        """(B, 6) = (H, W, 0, 0, H, W): original size, crop top-left, target size for square images.

        Integers, so casting the conditioning to a half dtype leaves them exact; ``denoise`` hands them
        to the UNet in its dtype, as the pipeline does.
        """
        ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.long,
                           device=self.device)
        return ids.expand(batch, 6)

    @torch.no_grad()
    def encode_prompts(self, prompts: str | Sequence[str], resolution: int) -> Conditioning:
        """embeds (B, 77, D1+D2) from both encoders' penultimate layers, pooled (B, P) from the second."""
        prompts = as_prompt_list(prompts)
        states = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = encoder(self._token_ids(tokenizer, encoder, prompts), output_hidden_states=True)
            states.append(out.hidden_states[-2])
        embeds = torch.cat(states, dim=-1)
        return Conditioning(embeds=embeds, pooled=out.text_embeds, time_ids=self.time_ids(len(prompts), resolution))

    def _empty_prompt(self, resolution: int) -> Conditioning:
        encoded = self.encode_prompts([""], resolution)
        if not self.force_zeros_for_empty_prompt:
            return encoded
        return Conditioning(embeds=torch.zeros_like(encoded.embeds), pooled=torch.zeros_like(encoded.pooled),
                            time_ids=encoded.time_ids)

    # -- the denoiser call ----------------------------------------------------------------------
    def _added_conditions(self, cond: Conditioning, dtype: torch.dtype) -> dict[str, Any]:
        if cond.pooled is None or cond.time_ids is None:
            raise ValueError("SDXL needs pooled text embeddings and time_ids; this conditioning has none "
                             "(was it encoded by an SD1.5 backbone?)")
        return {"added_cond_kwargs": {"text_embeds": cond.pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)}}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        return {**super().frozen_modules(), "text_encoder_2": self.text_encoder_2}
