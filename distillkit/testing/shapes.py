"""A captioned image folder drawn procedurally: real training data for offline runs and tests.

Coloured circles, squares and triangles on plain backgrounds, written as PNGs with a diffusers-style
``metadata.jsonl``. Unlike random tensors they have structure a discriminator can learn, and unlike
downloaded photos they exist on every machine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 40)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, color: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    bg = tuple(int(c) for c in (rng.randint(200, 255),) * 3)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return img


def write_shapes_dataset(path: str | Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` captioned shape images to ``path`` (an ImageFolder with metadata.jsonl)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLORS)
    lines = []
    for i in range(n):
        shape, color = SHAPES[i % len(SHAPES)], names[(i // len(SHAPES)) % len(names)]
        draw_shape(shape, COLORS[color], size, rng).save(path / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": f"a {color} {shape}"}))
    (path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return path
