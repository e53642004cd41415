"""How far a neural toy teacher is from the exact one, and its sampling curve, for ``distillkit teach``.

Two views of the same question:

* the denoiser error per timestep: E ||x̂0_θ(x_t, t, c) − E[x0 | x_t, c]||² / D over x0 from the world
  and fresh noise, for the prompt and for the empty prompt (CFG needs both branches right);
* the samples: the exact metrics of DDIM sampling at 1..50 steps, next to the exact teacher's DDIM
  samples with the same noise. ``distillkit compare`` draws these as the teacher's reference curves,
  so they are written with the teacher (``reference.json``) instead of being recomputed by every
  comparison.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

#: the timesteps of the denoiser-error table
ERROR_TIMESTEPS = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
#: the sampling steps of the reference curve (ADD's and SiD's comparisons use these)
REFERENCE_STEPS = (1, 2, 4, 8, 25, 50)
REFERENCE_FILE = "reference.json"


@torch.no_grad()
def denoiser_error(backbone, unet, timesteps: Sequence[int] = ERROR_TIMESTEPS, per_prompt: int = 64,
                   seed: int = 0) -> dict:
    """x0-MSE per pixel of ``unet`` against the exact posterior mean, per timestep, conditional and not."""
    world, exact = backbone.world, backbone.exact
    g = torch.Generator().manual_seed(seed)
    prompts = world.balanced_prompts(per_prompt)
    x0, _ = world.sample(prompts, g)
    x0 = x0.float().to(backbone.device)
    cond = backbone.encode_prompts(prompts, world.image_shape[-1])
    uncond = backbone.empty_conditioning(len(prompts), world.image_shape[-1])
    rows = {"t": [], "x0_mse": [], "x0_mse_uncond": [], "exact_x0_mse_to_data": []}
    for t in timesteps:
        tt = torch.full((len(prompts),), int(t), dtype=torch.long, device=x0.device)
        x_t = backbone.schedule.add_noise(x0, torch.randn(x0.shape, generator=g).to(x0), tt)
        for key, c in (("x0_mse", cond), ("x0_mse_uncond", uncond)):
            net = backbone.denoise(unet, x_t, tt, c).x0
            best = backbone.denoise(exact, x_t, tt, c).x0
            rows[key].append(float((net - best).pow(2).mean()))
        rows["exact_x0_mse_to_data"].append(float((backbone.denoise(exact, x_t, tt, cond).x0 - x0).pow(2).mean()))
        rows["t"].append(int(t))
    return rows


def reference_curve(backbone, unet, guidance_scale: float = 1.0, per_prompt: int = 256, seed: int = 0,
                    steps: Sequence[int] = REFERENCE_STEPS) -> dict:
    """Exact metrics of DDIM samples of ``unet`` at each step count (plus the noise floor and timing)."""
    from distillkit.metrics.solver import SOLVER, sample_teacher
    from distillkit.toy.metrics import noise_floor, protocol, toy_metrics

    world = backbone.world
    prompts = world.balanced_prompts(per_prompt)
    curve = []
    for k in steps:
        start = time.perf_counter()
        x = sample_teacher(backbone, prompts, k, guidance_scale, world.image_shape[-1], seed, unet=unet)
        seconds = time.perf_counter() - start
        report = toy_metrics(world, x, prompts)
        curve.append({"steps": k, "metrics": report.overall, "per_prompt": report.per_prompt,
                      "seconds_per_sample": seconds / len(prompts)})
    return {"protocol": {**protocol(world, per_prompt), "seed": seed, "solver": SOLVER,
                         "guidance_scale": guidance_scale},
            "noise_floor": noise_floor(world, prompts, seed + 1).overall, "curve": curve}


def write_reference(folder: str | Path, curves: dict) -> Path:
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(curves, indent=2) + "\n", encoding="utf-8")
    return path


def read_reference(folder: str | Path) -> dict | None:
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
