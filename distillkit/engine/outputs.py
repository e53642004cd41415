"""The run directory: resolved recipe, metrics log, sample grids.

Layout::

    <output_dir>/recipe.toml        the fully resolved recipe (defaults filled in)
                 run.json           one entry per start: versions, plugins, command line
                 metrics.jsonl      one JSON object per logged step (plus resume/end events)
                 samples/step-*.png rows = sampling steps, columns = prompts
                 checkpoints/step-*/
                 final/             the student, loadable by the diffusers pipeline class
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class MetricsLog:
    """Append-only JSONL; each line is flushed so a killed run loses at most the current step.

    A kill in the middle of a write leaves a cut-off last line. Reading skips unparsable lines (and says
    how many), and the next write first ends such a line, so the fragment never swallows a good record.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._checked_end = False
        #: lines :meth:`read` could not parse at its last call
        self.skipped_lines = 0

    def _ends_cleanly(self) -> bool:
        try:
            with self.path.open("rb") as f:
                f.seek(0, 2)
                if f.tell() == 0:
                    return True
                f.seek(-1, 2)
                return f.read(1) == b"\n"
        except FileNotFoundError:
            return True

    def write(self, record: dict, required: bool = True) -> None:
        """Append ``record``. A failed write is a RunFolderError, or only a warning when not ``required``
        (the end event of a run that is failing anyway: its own message must not be hidden)."""
        from distillkit.errors import RunFolderError
        from distillkit.files import writing

        clean = {k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in record.items()}
        clean.setdefault("time", time.time())
        line = json.dumps(clean, allow_nan=True) + "\n"
        try:
            with writing("the metrics log", self.path):
                if not self._checked_end:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    if not self._ends_cleanly():  # a cut-off line of a killed run: finish it, start anew
                        line = "\n" + line
                    self._checked_end = True
                with self.path.open("a") as f:
                    f.write(line)
        except RunFolderError as exc:
            if required:
                raise
            logging.getLogger("distillkit").warning("%s", exc)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records, bad = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
        self.skipped_lines = bad
        return records


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → (N, H, W, 3) uint8."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


#: the smallest cell of a training sample grid, in pixels (smaller samples are enlarged to it)
SAMPLE_CELL = 96


def steps_label(k: int) -> str:
    return f"{k} step" + ("" if k == 1 else "s")


def save_grid(images: torch.Tensor, path: Path, ncols: int, pad: int = 2, row_labels: list[str] | None = None,
              col_labels: list[str] | None = None, min_cell: int = 0) -> Path:
    """Tile images (N, 3, H, W) in [0, 1] into one PNG, ``ncols`` per row, with optional labels
    (sampling steps down the left, prompts along the top) so a grid can be read without the recipe.
    Images smaller than ``min_cell`` pixels are enlarged by a whole factor, pixels kept sharp (a 16×16
    toy sample is unreadable at its own size, and smoothing would hide exactly what one looks for)."""
    from PIL import ImageDraw

    arr = to_uint8(images)
    factor = max(1, math.ceil(min_cell / min(arr.shape[1:3]))) if min_cell else 1
    if factor > 1:
        arr = arr.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, _ = arr.shape
    nrows = math.ceil(n / ncols)
    left = 8 + 7 * max((len(t) for t in row_labels or []), default=0) if row_labels else 0
    top = 16 if col_labels else 0
    grid = np.full((top + nrows * (h + pad) + pad, left + ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, ncols)
        y, x = top + pad + r * (h + pad), left + pad + c * (w + pad)
        grid[y:y + h, x:x + w] = img
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels or []):
        draw.text((4, top + pad + r * (h + pad) + h // 2 - 5), label, fill=(0, 0, 0))
    for c, label in enumerate(col_labels or []):
        limit = max(1, (w + pad) // 6)
        draw.text((left + pad + c * (w + pad), 3), label if len(label) <= limit else label[:limit - 1] + "…",
                  fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_samples(engine, folder, sample, step: int) -> Path:
    """Generate ``sample.prompts`` at each of ``sample.steps``, save the labelled grid, fire ``on_samples``,
    and redraw the loss curves; a write that fails is one message (see :mod:`distillkit.files`)."""
    from distillkit.engine.plots import plot_metrics
    from distillkit.files import writing

    images = torch.cat([engine.generate(sample.prompts, k, sample.seed, sample.use_ema) for k in sample.steps])
    with writing("a sample grid", folder.sample_path(step)):
        path = save_grid(images, folder.sample_path(step), ncols=len(sample.prompts),
                         row_labels=[steps_label(k) for k in sample.steps], col_labels=sample.prompts,
                         min_cell=SAMPLE_CELL)
    engine.pm.hook.on_samples(engine=engine, step=step, images=images, path=path)
    with writing("the loss curves", folder.path / "metrics.png"):
        plot_metrics(folder.metrics.read(), folder.path / "metrics.png")
    return path
