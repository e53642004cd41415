"""Experiment trackers (TensorBoard, Weights & Biases, ...) through accelerate's tracker classes.

``[log] report_to = ["tensorboard"]`` sends every logged step's metrics to each named tracker, as the
``--report_to`` of diffusers' training scripts does. The trackers are built here rather than through
``Accelerator(log_with=...)``, so they also work with an Accelerator an embedding program passes in, and
so a tracker whose package is missing is an error before training rather than accelerate's silent
skip (it drops unavailable trackers with a debug-level message).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillkit.errors import RecipeError

#: tracker name -> the package that provides it (for the install hint)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet_ml",
            "aim": "aim", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


def missing_trackers(names: list[str]) -> list[str]:
    """The trackers among ``names`` whose package is not installed."""
    from accelerate.tracking import get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    return [n for n in names if n not in available]


def _hparams(flat: dict[str, Any]) -> dict[str, Any]:
    """Recipe values as trackers accept them (numbers, strings, booleans; lists as JSON text)."""
    return {k: (v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v)) for k, v in flat.items()}


class Trackers:
    """The run's trackers; a no-op when the recipe names none (or on processes other than the main one)."""

    def __init__(self, cfg, run_name: str, output_dir: Path, recipe: dict, enabled: bool = True):
        self.trackers: list = []
        names = list(dict.fromkeys(cfg.report_to)) if cfg is not None else []
        if not names or not enabled:
            return
        missing = missing_trackers(names)
        if missing:
            pkgs = " ".join(PACKAGES.get(n, n) for n in missing)
            raise RecipeError([f"log.report_to: {', '.join(missing)} needs a package that is not installed: "
                               f"pip install {pkgs} (or remove it from log.report_to)"])
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        from distillkit.engine.changes import flatten

        project = cfg.project or run_name
        logging_dir = Path(output_dir) / cfg.logging_dir
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(project, str(logging_dir)) if cls.requires_logging_directory else cls(project)
            if hasattr(tracker, "start"):  # accelerate >= 1.3 starts trackers separately from building them
                tracker.start()
            tracker.store_init_configuration(_hparams(flatten(recipe)))
            self.trackers.append(tracker)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.trackers:
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()
