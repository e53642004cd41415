"""Exact samples of a toy world written as an image folder, the training data of toy recipes.

The engine reads real images through its ordinary image-folder loader (``metadata.jsonl`` with
``file_name`` and ``text``), so the toy world needs no data path of its own. PNG stores 8 bits per
channel: a sample is rounded to the nearest of 256 levels on [-1, 1] (an error of at most 1/255, about
a thirtieth of a component's standard deviation of 0.06) and clipped to [-1, 1] (the default world's
means keep at least 5 standard deviations from either end, so clipping almost never happens).
Metrics always compare with the exact distribution, never with these files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distillkit.toy.world import World


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] → (H, W, C) uint8, the inverse of the loader's ``v / 127.5 − 1``."""
    return ((x.double().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


#: what a data folder was written from; a second call with the same settings leaves the folder as it is
STAMP = "toy_data.json"


def _fingerprint(world: World) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(world.tensors().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def write_dataset(world: World, out: str | os.PathLike, count: int, seed: int = 0) -> Path:
    """``count`` exact samples (prompts drawn by the world's prompt shares) as PNGs plus ``metadata.jsonl``.

    Idempotent: a folder already written with the same world, count and seed is kept (so a quick-start can
    be rerun); any other non-empty folder is refused rather than mixed with new files.
    """
    from distillkit.errors import DataError

    out = Path(out)
    stamp = {"count": count, "seed": seed, "world": _fingerprint(world)}
    if (out / STAMP).is_file() and json.loads((out / STAMP).read_text()) == stamp:
        return out
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{str(out)!r} is not empty and was not written with these settings; delete it or choose "
                        f"another folder")
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(world.prompt_weights, count, replacement=True, generator=g).tolist()
    prompts = [world.prompts[i] for i in picks]
    samples, components = world.sample(prompts, g)
    width = len(str(count - 1))
    lines = []
    for i, (x, prompt, k) in enumerate(zip(samples, prompts, components.tolist())):
        name = f"{i:0{width}d}.png"
        Image.fromarray(to_uint8(x)).save(out / name)
        lines.append(json.dumps({"file_name": name, "text": prompt, "component": k}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / STAMP).write_text(json.dumps(stamp) + "\n")
    return out
