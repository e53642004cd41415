"""SD1.5- and SDXL-sized diffusers folders with random weights, built from the real configs (no hub here).

The configs below are the published ones (runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0 ``config.json`` files, written out); the tokenizers are the full
49,408-id CLIP BPE tokenizer built offline from the merges open_clip ships. Parameter counts: SD1.5 UNet
859.5 M, VAE 83.7 M, CLIP-L text 123.1 M; SDXL UNet 2,567 M, CLIP-L 123.1 M, OpenCLIP-bigG text 694.7 M.
Used by ``memory.py`` (CPU) and ``gpu.py`` (CUDA); the folders are written once and reused.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from distillkit.testing.real_configs import CLIP_BIGG, CLIP_L, SD15_UNET, SDXL_UNET, VAE


SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1)


def full_clip_tokenizer():
    """CLIP's 49,408-id tokenizer from open_clip's bundled BPE merges (vocab/merges passed as objects:
    transformers 5.x silently builds a 2-token tokenizer from ``vocab_file=``/``merges_file=``)."""
    from transformers import CLIPTokenizer

    from distillkit.testing.tokenizer import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode, open_clip_bpe_path

    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)
    assert len(tok) == 49408, len(tok)
    return tok


def build(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight ``family`` ("sd15" or "sdxl") diffusers folder to ``path`` (once)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    tok = full_clip_tokenizer()
    vae = AutoencoderKL(**VAE, scaling_factor=0.18215 if family == "sd15" else 0.13025)
    if family == "sd15":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)), tokenizer=tok,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=PNDMScheduler(**SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)), tokenizer=tok,
            tokenizer_2=full_clip_tokenizer(), unet=UNet2DConditionModel(**SDXL_UNET),
            scheduler=EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading"),
            force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def unet_parameters(family: str) -> int:
    """Parameter count of the real UNet, from its config on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SD15_UNET if family == "sd15" else SDXL_UNET))
    return sum(p.numel() for p in unet.parameters())
