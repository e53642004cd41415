"""``distillkit eval`` in the toy world: sample a student at each step count and score it exactly.

Every prompt gets the same number of samples from seeded noise (the same noise for every step count
and every run, so differences between rows are the samplers', not the draws'); the metrics are those
of :mod:`distillkit.toy.metrics`, with the noise floor of a fresh exact sample of the same layout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from distillkit.toy.metrics import noise_floor, protocol, toy_metrics

DEFAULT_PER_PROMPT = 256
#: upscaling of the 16×16 samples in the saved grids, so they can be looked at
GRID_SCALE = 4
GRID_COLUMNS = 8


def protocol_name(per_prompt: int) -> str:
    return f"toy-{per_prompt}"


@torch.no_grad()
def student_samples(backbone, student, prompts: Sequence[str], steps: int, seed: int,
                    batch_size: int = 512) -> tuple[torch.Tensor, float]:
    """(samples in [-1, 1] (N, C, H, W) on the CPU, seconds per sample) of ``student`` in ``steps`` steps."""
    resolution = backbone.world.image_shape[-1]
    g = torch.Generator().manual_seed(seed)  # the initial noise: the same for every step count
    renoise = torch.Generator().manual_seed(seed + 1)  # the noise of steps 2..k
    out = []
    seconds = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        noise = torch.randn(backbone.sample_shape(len(chunk), resolution), generator=g).to(backbone.device)
        cond = backbone.encode_prompts(chunk, resolution)
        begin = time.perf_counter()
        x0 = student.sample(noise, cond, steps, generator=renoise)
        seconds += time.perf_counter() - begin
        out.append(backbone.decode(x0).float().cpu())
    return torch.cat(out), seconds / len(prompts)


def save_sample_grid(world, samples: torch.Tensor, prompts: Sequence[str], path: Path, title: str = "") -> Path:
    """The first :data:`GRID_COLUMNS` samples of each prompt, one row per prompt, upscaled for viewing."""
    from distillkit.engine.outputs import save_grid

    rows = []
    for p in world.prompts:
        idx = [i for i, q in enumerate(prompts) if q == p][:GRID_COLUMNS]
        if idx:
            rows.append(samples[idx])
    images = torch.cat(rows)
    images = torch.nn.functional.interpolate((images + 1) / 2, scale_factor=GRID_SCALE, mode="nearest")
    labels = [p for p in world.prompts if p in prompts]
    return save_grid(images.clamp(0, 1), path, ncols=GRID_COLUMNS, row_labels=labels,
                     col_labels=[title] + [""] * (GRID_COLUMNS - 1) if title else None)


def evaluate_toy(backbone, student, steps: Sequence[int], per_prompt: int = DEFAULT_PER_PROMPT, seed: int = 0,
                 batch_size: int = 512, grid_prefix: Optional[Path] = None) -> dict:
    """Exact metrics of ``student`` at each step count, with the protocol and the noise floor; with
    ``grid_prefix``, a sample grid per step count at ``<grid_prefix>-steps<k>.png``."""
    world = backbone.world
    prompts = world.balanced_prompts(per_prompt)
    name = protocol_name(per_prompt)
    results = []
    for k in steps:
        samples, seconds = student_samples(backbone, student, prompts, k, seed, batch_size)
        report = toy_metrics(world, samples, prompts)
        entry = {"steps": int(k), "metrics": report.overall, "per_prompt": report.per_prompt,
                 "seconds_per_sample": seconds}
        if grid_prefix is not None:
            path = save_sample_grid(world, samples, prompts, Path(f"{grid_prefix}-steps{k}.png"),
                                    title=f"{k} step" + ("s" if k != 1 else ""))
            entry["grid"] = str(path)
        results.append(entry)
    return {"protocol": {**protocol(world, per_prompt), "name": name, "seed": seed},
            "noise_floor": noise_floor(world, prompts, seed + 1).overall, "results": results}
