"""DMD2's memory layout at real size, counted from the real model configs on the meta device (nothing is
downloaded or allocated: the configs of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0
are written out below).

    python plugins/sds/tools/dmd2_memory.py

Layout of the shipped recipes (recipes/dmd2_sd15.toml, recipes/dmd2_sdxl.toml), as DMD2's own code: the teacher
UNet frozen in bf16; the student and the fake score each a full trainable fp32 copy with AdamW (fp32 weights,
fp32 gradients, two fp32 moments: 16 bytes per parameter); the GAN classifier head likewise; the VAE and text
encoders frozen in bf16. distillkit frees each role's gradients after its update, so at most one phase's
gradients exist at a time (the critic phase's: fake score + head). Activations come on top and depend on batch
size, resolution and gradient checkpointing; they are not counted here.
"""

from __future__ import annotations

import torch

from distillkit.testing.real_configs import CLIP_BIGG, CLIP_L, SD15_UNET, SDXL_UNET, VAE


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet(config: dict) -> int:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return count(UNet2DConditionModel.from_config(config))


def frozen_parts(family: str) -> int:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        n = count(AutoencoderKL.from_config(VAE)) + count(CLIPTextModel(CLIPTextConfig(**CLIP_L)))
        if family == "sdxl":
            n += count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)))
    return n


def head(num_convs: int, kernel: int, channels: int = 1280) -> int:
    """A conv head on the 1280-channel bottleneck: num_convs × (k×k conv + GroupNorm), then a 1×1 conv to 1 logit."""
    per_block = channels * channels * kernel * kernel + channels + 2 * channels
    return num_convs * per_block + channels + 1


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def rows() -> list[dict]:
    out = []
    for family, config, convs, res in (("sd15", SD15_UNET, 2, 512), ("sdxl", SDXL_UNET, 4, 1024)):
        n_unet = unet(config)
        n_frozen = frozen_parts(family)
        n_head_dk = head(convs, 3)  # core.gan_head: 3×3 convs
        n_head_dmd2 = head(convs, 4)  # DMD2's cls_pred_branch: 4×4 convs
        teacher = 2 * n_unet  # bf16 weights
        frozen = 2 * n_frozen
        trained = {"student": n_unet, "fake_score": n_unet, "gan_head": n_head_dk}
        weights_states = sum(12 * n for n in trained.values())  # fp32 weights + two fp32 AdamW moments
        grads_peak = 4 * (n_unet + n_head_dk)  # the critic phase's gradients (fake score + head), fp32
        out.append(dict(family=family, resolution=res, unet=n_unet, frozen=n_frozen, head=n_head_dk,
                        head_dmd2=n_head_dmd2, teacher=teacher, frozen_bytes=frozen,
                        trained=weights_states, grads=grads_peak,
                        total=teacher + frozen + weights_states + grads_peak,
                        all_grads_total=teacher + frozen + sum(16 * n for n in trained.values())))
    return out


def main() -> None:
    for r in rows():
        print(f"DMD2 {r['family']} {r['resolution']}²: UNet {r['unet'] / 1e6:.1f} M params (3 copies: teacher bf16, "
              f"student + fake score fp32 AdamW), GAN head {r['head'] / 1e6:.1f} M (DMD2's 4×4 convs: "
              f"{r['head_dmd2'] / 1e6:.1f} M), VAE + text encoders {r['frozen'] / 1e6:.1f} M bf16")
        print(f"  teacher {gb(r['teacher'])} + frozen parts {gb(r['frozen_bytes'])} + trained weights and AdamW "
              f"states {gb(r['trained'])} + one phase's gradients {gb(r['grads'])} = {gb(r['total'])} "
              f"(all gradients held at once: {gb(r['all_grads_total'])}), before activations")


if __name__ == "__main__":
    main()
