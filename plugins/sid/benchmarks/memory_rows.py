"""The SiD recipes' memory layouts: resident UNet copies and bytes of weights + gradients + Adam state.

Counts parameters of the real SD1.5 and SDXL UNets, built from their configs (written out below) on PyTorch's
meta device, so nothing is allocated or downloaded. The counting model:

* the frozen teacher in the recipe's ``model.dtype`` (SD1.5: float32, 4 B; SDXL: bfloat16, 2 B per parameter);
* trained weights in fp32: per trained parameter 4 B of weight, 4 of gradient, 8 of Adam state (two moments);
* a LoRA adapter of rank r on ``to_q``, ``to_k``, ``to_v``, ``to_out.0``: r·(in + out) parameters each;
* a full copy is one more resident UNet; an adapter on the shared base is none;
* not counted: text encoders, VAE, activations, Adam's step counters. The student's EMA (an fp32 copy) is
  listed apart. Gradients are summed over roles; the engine frees each role's gradients after its update,
  so the peak is the larger role's (also listed).

    python plugins/sid/benchmarks/memory_rows.py [--rank 64]
"""

from __future__ import annotations

import argparse

import torch

from distillkit.testing.real_configs import SD15_UNET, SDXL_UNET


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def count(config: dict, rank: int) -> tuple[int, int]:
    """(UNet parameters, LoRA-adapter parameters at ``rank``), from a meta-device build."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    n = sum(p.numel() for p in unet.parameters())
    lora = sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGETS))
    return n, lora


def row(n: int, lora: int, teacher_bytes: int, student: str, fake: str) -> dict:
    """Bytes of one layout: ``student`` / ``fake`` each "full" or "lora"."""
    trained = {"student": n if student == "full" else lora, "fake score": n if fake == "full" else lora}
    weights = teacher_bytes * n + sum(4 * p for p in trained.values())
    grads = sum(4 * p for p in trained.values())
    adam = sum(8 * p for p in trained.values())
    copies = 1 + sum(1 for kind in (student, fake) if kind == "full")
    return {"copies": copies, "weights": weights, "grads": grads, "adam": adam, "total": weights + grads + adam,
            "peak_grads": max(4 * p for p in trained.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of adapter roles (the recipes' 64)")
    args = parser.parse_args()
    sd15, sdxl = count(SD15_UNET, args.rank), count(SDXL_UNET, args.rank)
    print(f"UNet parameters: SD1.5 {sd15[0]:,}, SDXL {sdxl[0]:,}; LoRA rank {args.rank}: {sd15[1]:,} / {sdxl[1]:,}")
    layouts = [
        ("recipes/sid_sd15.toml", "SD1.5 512²", sd15, 4, "full", "full", "EMA +{ema:.2f} GB"),
        ("  variant: adapter fake score", "SD1.5 512²", sd15, 4, "full", "lora", ""),
        ("recipes/sid_sdxl*.toml, sida_sdxl.toml", "SDXL 1024²", sdxl, 2, "full", "lora", "no EMA"),
        ("  variant: full fake score", "SDXL 1024²", sdxl, 2, "full", "full", ""),
        ("  variant: LoRA student + LoRA fake score", "SDXL 1024²", sdxl, 2, "lora", "lora", ""),
    ]
    gb = 1e9
    print(f"{'layout':42} {'model':11} {'copies':>6} {'total GB':>9}  (weights + grads + Adam)  peak grads  note")
    for name, model, (n, lora), teacher, student, fake, note in layouts:
        r = row(n, lora, teacher, student, fake)
        parts = f"({r['weights'] / gb:.2f} + {r['grads'] / gb:.2f} + {r['adam'] / gb:.2f})"
        print(f"{name:42} {model:11} {r['copies']:>6} {r['total'] / gb:>9.2f}  {parts:24} "
              f"{r['peak_grads'] / gb:>10.2f}  {note.format(ema=4 * n / gb)}")


if __name__ == "__main__":
    main()
