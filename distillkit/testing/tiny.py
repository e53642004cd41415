"""Tiny, randomly initialised SD1.5-, SDXL- and pixel-shaped models written as real loadable folders.

No Stable Diffusion weights can be had offline, so tests exercise the *mechanics* (loading, shapes,
dtypes, gradients, saving) on models of the right architecture and tiny width. Sizes follow what was
measured to work with diffusers 0.42 on this project's CPU machines: the VAE keeps 4 blocks so the
latent downscale is SD's real ×8, the UNets have about a million parameters, and each folder is
built and saved in well under a second. Every network is built under its own fixed seed, so a folder
is bit-identical across runs and does not depend on the order things were built in.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from distillkit.models.pixel import write_pixel_folder
from distillkit.testing.tokenizer import MAX_LENGTH, tiny_clip_tokenizer
from distillkit.utils import seeded

SEED = 0
TEXT_WIDTH = 32

#: SD1.5's training schedule (SDXL uses the same betas)
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   prediction_type="epsilon", steps_offset=1)


def sd_scheduler() -> DDPMScheduler:
    """SD1.5's betas in a DDPM scheduler (``set_alpha_to_one`` is a DDIM/PNDM option DDPM rejects)."""
    return DDPMScheduler(**SD_SCHEDULE, clip_sample=False)


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL ships an Euler scheduler; the fixture keeps that so saving is seen to preserve the class."""
    return EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading")


def tiny_text_encoder(tokenizer, cls=CLIPTextModel, seed: int = SEED, **config):
    """A 2-layer, 32-wide CLIP text encoder whose vocabulary and special ids match ``tokenizer``.

    The ids matter: CLIP pools at the first ``eos_token_id``, which must be the tokenizer's.
    """
    cfg = CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=MAX_LENGTH, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **config)
    with seeded(seed):
        return cls(cfg)


def tiny_vae(scaling_factor: float, seed: int = SEED) -> AutoencoderKL:
    with seeded(seed):
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=scaling_factor)


def tiny_sd_unet(in_channels: int = 4, sample_size: int = 8, seed: int = SEED) -> UNet2DConditionModel:
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=8)


def tiny_sdxl_unet(seed: int = SEED) -> UNet2DConditionModel:
    """SDXL's conditioning layout: cross-attention over both encoders (2 × 32), pooled 32 + 6 time ids × 8."""
    time_embed = 8
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2 * TEXT_WIDTH,
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=time_embed,
            projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * time_embed)


def build_tiny_sd15(path: str | os.PathLike) -> Path:
    """An SD1.5-shaped diffusers folder (3.8 MB) that ``StableDiffusionPipeline.from_pretrained`` loads."""
    tokenizer = tiny_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(scaling_factor=0.18215), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer,
        unet=tiny_sd_unet(), scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_tiny_sdxl(path: str | os.PathLike) -> Path:
    """An SDXL-shaped diffusers folder (the same tiny tokenizer for both encoders)."""
    tokenizer = tiny_clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(scaling_factor=0.13025), text_encoder=tiny_text_encoder(tokenizer),
        text_encoder_2=tiny_text_encoder(tokenizer, CLIPTextModelWithProjection, seed=SEED + 1,
                                         projection_dim=TEXT_WIDTH),
        tokenizer=tokenizer, tokenizer_2=tiny_clip_tokenizer(), unet=tiny_sdxl_unet(), scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_tiny_pixel(path: str | os.PathLike, sample_size: int = 16) -> Path:
    """A pixel-space model folder (3-channel UNet at ``sample_size``²) that ``PixelBackbone`` loads."""
    tokenizer = tiny_clip_tokenizer()
    return write_pixel_folder(path, tokenizer=tokenizer, text_encoder=tiny_text_encoder(tokenizer),
                              unet=tiny_sd_unet(in_channels=3, sample_size=sample_size), scheduler=sd_scheduler())
