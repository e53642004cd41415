"""Loss curves as a PNG next to the sample grids: one panel per logged loss term.

With matplotlib installed (``pip install "distillkit[plots]"``) each panel has a labelled step axis and
value axis; without it the panels are drawn with PIL (already a dependency), so a training box needs
nothing extra. Either way a panel shows the raw values in light grey and a running mean in colour, with
the last value and the range written on it: enough to see at a glance whether a discriminator collapsed
or a loss diverged.

A resumed run logs again the steps between its checkpoint and the moment the earlier process died;
:func:`curve_rows` keeps the latest record of each step, so the curves show one trajectory.
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


def curve_rows(records: list[dict]) -> list[dict]:
    """Step records in step order, as the run that reached the end trained them: a resume from step s
    drops the records after s of the process that died (it repeats those steps)."""
    by_step: dict[int, dict] = {}
    for r in records:
        if r.get("event") == "resume" and isinstance(r.get("step"), int):
            by_step = {s: rec for s, rec in by_step.items() if s <= r["step"]}
        elif "event" not in r and isinstance(r.get("step"), int):
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    pts = []
    for r in rows:
        try:
            v = float(r[key])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(v):
            pts.append((r["step"], v))
    return pts


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_metrics(records: list[dict], path: str | Path, keys: list[str] | None = None, ncols: int = 3) -> Path | None:
    """Write ``path`` with one panel per key; returns None when there is nothing to plot yet."""
    rows = curve_rows(records)
    keys = keys or curve_keys(rows)
    if not rows or not keys:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if have_matplotlib():
        figure(rows, keys, ncols).savefig(path)
    else:
        _pil_panels(rows, keys, ncols).save(path)
    return path


def figure(rows: list[dict], keys: list[str], ncols: int = 3):
    """The matplotlib figure of :func:`plot_metrics` (without pyplot, so no global state or GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(key.rsplit("/", 1)[-1])
        ax.grid(True, alpha=0.3)
        pts = _points(rows, key)
        if not pts:
            continue
        steps, values = zip(*pts)
        ax.plot(steps, values, color="0.75", linewidth=1, label="value", marker="o" if len(pts) == 1 else None)
        if len(pts) > 1:
            ax.plot(steps, _smooth(list(values), max(1, len(values) // 20)), color="tab:blue", linewidth=1.8,
                    label="running mean")
        ax.annotate(f"step {steps[-1]}: {values[-1]:.4g}", xy=(0.02, 0.04), xycoords="axes fraction", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _pil_panels(rows: list[dict], keys: list[str], ncols: int) -> Image.Image:
    nrows = math.ceil(len(keys) / ncols)
    canvas = Image.new("RGB", (ncols * PANEL_W, nrows * PANEL_H), "white")
    draw = ImageDraw.Draw(canvas)
    for i, key in enumerate(keys):
        pts = _points(rows, key)
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
    return canvas
