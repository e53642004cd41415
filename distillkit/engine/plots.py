"""Loss curves as a PNG next to the sample grids: one panel per logged loss term.

Drawn with PIL (already a dependency) rather than matplotlib, so a training box needs nothing extra.
Each panel shows the raw values in light grey and a running mean in colour, with the last value and the
range written on it: enough to see at a glance whether a discriminator collapsed or a loss diverged.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 320, 150, 28


def curve_keys(records: list[dict]) -> list[str]:
    """Generator and critic totals first, then every loss term, in the order first logged."""
    keys: list[str] = []
    for r in records:
        for k in r:
            if k not in keys and k.startswith(("generator/", "critic/", "loss/")):
                keys.append(k)
    return sorted(keys, key=lambda k: (not k.startswith(("generator/", "critic/")), keys.index(k)))


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_metrics(records: list[dict], path: str | Path, keys: list[str] | None = None, ncols: int = 3) -> Path | None:
    """Write ``path`` with one panel per key; returns None when there is nothing to plot yet."""
    rows = [r for r in records if "event" not in r and "step" in r]
    keys = keys or curve_keys(rows)
    if not rows or not keys:
        return None
    nrows = math.ceil(len(keys) / ncols)
    canvas = Image.new("RGB", (ncols * PANEL_W, nrows * PANEL_H), "white")
    draw = ImageDraw.Draw(canvas)
    for i, key in enumerate(keys):
        pts = [(r["step"], float(r[key])) for r in rows if key in r and math.isfinite(float(r[key]))]
        x0, y0 = (i % ncols) * PANEL_W, (i // ncols) * PANEL_H
        draw.rectangle([x0 + MARGIN, y0 + 18, x0 + PANEL_W - 8, y0 + PANEL_H - MARGIN], outline=(180, 180, 180))
        draw.text((x0 + MARGIN, y0 + 4), key, fill=(0, 0, 0))
        if not pts:
            continue
        steps, values = zip(*pts)
        lo, hi = min(values), max(values)
        span_y, span_x = (hi - lo) or 1.0, (max(steps) - min(steps)) or 1

        def xy(s, v):
            return (x0 + MARGIN + (s - min(steps)) / span_x * (PANEL_W - MARGIN - 8),
                    y0 + PANEL_H - MARGIN - (v - lo) / span_y * (PANEL_H - MARGIN - 18))

        if len(pts) > 1:
            draw.line([xy(s, v) for s, v in pts], fill=(200, 200, 200), width=1)
            smooth = _smooth(list(values), max(1, len(values) // 20))
            draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 90, 200), width=2)
        else:
            x, y = xy(*pts[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
        draw.text((x0 + MARGIN + 2, y0 + PANEL_H - MARGIN + 4),
                  f"step {steps[-1]}: {values[-1]:.4g}   [{lo:.3g}, {hi:.3g}]", fill=(60, 60, 60))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
