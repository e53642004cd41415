"""The engine's batch source: the batch for global step k on rank r is a pure function of (data, seed, k, r).

There is no iterator state to checkpoint. The data is read as one endless stream of samples: epoch e is
``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``, epochs follow each other,
and global step k takes the ``batch_size * world_size`` consecutive samples starting at
``k * batch_size * world_size``, of which rank r takes the r-th slice of ``batch_size``. So

* a run resumed at step k gets exactly the batch the uninterrupted run got (nothing to replay);
* the ranks of one step partition its global batch, and within an epoch no sample repeats, for any
  world size; changing the world size keeps the sample order and only re-slices it;
* a batch may straddle two epochs: the stream has no ``drop_last`` and no short batches.

Data-free training (prompts only) cycles over the prompt list the same way and returns no pixels. With
images, the prompts are the images' captions; if ``data.prompts`` is also set it is ignored (the
captions are what the images show, and a separate list would pair images with text they do not
depict), and :meth:`BatchSource.describe` says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from distillkit.data.images import ImageTextDataset
from distillkit.data.prompts import load_prompts
from distillkit.errors import DataError
from distillkit.recipe.schema import DataConfig


class BatchSource:
    """Deterministic, resumable batches over an :class:`ImageTextDataset` or a prompt list."""

    def __init__(self, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 dataset: Optional[ImageTextDataset] = None, prompts: Optional[Sequence[str]] = None,
                 ignored_prompts: bool = False):
        if (dataset is None) == (prompts is None):
            raise ValueError("give exactly one of dataset= or prompts=")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset = dataset
        self.prompts = None if prompts is None else list(prompts)
        if self.prompts is not None and not self.prompts:
            raise DataError("the prompt list is empty")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.ignored_prompts = ignored_prompts
        self._perms: dict[int, torch.Tensor] = {}

    @classmethod
    def from_config(cls, data_cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1,
                    base_dir: Union[str, os.PathLike, None] = None) -> "BatchSource":
        """Build from a recipe's ``[data]`` table; relative paths are resolved against ``base_dir``.

        ``None`` leaves them relative to the current working directory, which is what the engine
        passes: recipe paths are taken from where the run is launched (the README's convention), as
        are the model and weight paths, rather than from the recipe's folder."""
        common = dict(batch_size=data_cfg.batch_size, seed=seed, rank=rank, world_size=world_size)
        transform = dict(resolution=data_cfg.resolution, center_crop=data_cfg.center_crop,
                         random_flip=data_cfg.random_flip, strict=data_cfg.strict, seed=seed)
        if data_cfg.images:
            dataset = ImageTextDataset.from_folder(_resolve(data_cfg.images, base_dir),
                                                   caption_column=data_cfg.caption_column, **transform)
        elif data_cfg.dataset:
            local = _resolve(data_cfg.dataset, base_dir)
            name = str(local) if local.exists() else data_cfg.dataset  # otherwise a hub name
            dataset = ImageTextDataset.from_dataset(name, split=data_cfg.dataset_split,
                                                    image_column=data_cfg.image_column,
                                                    caption_column=data_cfg.caption_column, **transform)
        else:
            spec = data_cfg.prompts
            prompts = load_prompts(_resolve(spec, base_dir) if isinstance(spec, str) else spec)
            return cls(prompts=prompts, **common)
        return cls(dataset=dataset, ignored_prompts=bool(data_cfg.prompts), **common)

    # -- the stream ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Items per epoch (usable ones, for a checked folder)."""
        return len(self.dataset) if self.dataset is not None else len(self.prompts)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch_of(self, step: int) -> int:
        """The epoch the first sample of global step ``step`` belongs to."""
        return step * self.global_batch_size // len(self)

    def _permutation(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + epoch))
            if len(self._perms) >= 2:  # a batch spans at most two epochs when n >= global batch
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int) -> list[tuple[int, int]]:
        """``(epoch, item index)`` for each sample this rank takes at global step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = len(self)
        start = step * self.global_batch_size + self.rank * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, n)
            out.append((epoch, int(self._permutation(epoch)[offset])))
        return out

    def batch(self, step: int) -> dict:
        """This rank's batch for global step ``step``.

        ``prompts``: list[str]; ``pixels``: (b, 3, R, R) float32 in [-1, 1], or None for prompt-only data;
        ``original_sizes`` / ``crop_top_lefts``: per-sample (h, w) / (top, left) for SDXL's micro-
        conditioning, or None for prompt-only data.
        """
        picks = self.indices(step)
        if self.dataset is None:
            return {"prompts": [self.prompts[i] for _, i in picks], "pixels": None,
                    "original_sizes": None, "crop_top_lefts": None}
        items = [self.dataset.get(i, epoch) for epoch, i in picks]
        return {"prompts": [it["prompt"] for it in items],
                "pixels": torch.stack([it["pixels"] for it in items]),
                "original_sizes": [it["original_size"] for it in items],
                "crop_top_lefts": [it["crop_top_left"] for it in items]}

    def describe(self) -> dict:
        """Counts for the run log. For a ``datasets`` source, skipped items are found as they are
        loaded, so the counts grow during training (``checked: "lazily"``)."""
        info = {"source": "prompts" if self.dataset is None else self.dataset.source.kind,
                "items": len(self), "batch_size": self.batch_size, "global_batch_size": self.global_batch_size,
                "steps_per_epoch": len(self) / self.global_batch_size}
        if self.dataset is not None:
            info.update(skipped=dict(self.dataset.skipped), skipped_total=sum(self.dataset.skipped.values()),
                        skipped_examples=list(self.dataset.skipped_examples),
                        checked="lazily" if self.dataset.lazy else "at start",
                        resolution=self.dataset.resolution)
            if self.ignored_prompts:
                info["note"] = "data.prompts is ignored: the images' captions are the prompts"
        return info


def _resolve(path: Union[str, os.PathLike], base_dir: Union[str, os.PathLike, None]) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p
