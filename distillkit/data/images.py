"""Image-caption pairs, decoded and cropped reproducibly, with bad items skipped and counted.

Two sources share one item pipeline:

* an image folder in the diffusers ImageFolder convention (``metadata.jsonl``, one JSON object a line
  with ``file_name`` and a caption column), or, when there is no ``metadata.jsonl``, images with a
  same-stem ``.txt`` caption beside each;
* a Hugging Face ``datasets`` dataset, by hub name or local path (a ``save_to_disk`` folder included).

Real scraped datasets always hold a few broken files. Crashing at step 40 000 on one truncated JPEG is
the worst outcome, silently training on fewer images than the user thinks is the second worst, so the
default is to skip and *count* (``dataset.skipped``, by reason), and ``strict=True`` turns the first
problem into a :class:`DataError` naming the file. A folder is checked when the dataset is built (an
``Image.verify`` per file: cheap, header and chunk checks only); a ``datasets`` dataset can hold
millions of rows, so it is checked lazily, at load time. Either way an item that fails to load is
replaced by the next usable index, which keeps every lookup a pure function of the data.

Random crops and flips draw from a ``torch.Generator`` seeded by :func:`item_seed` from (seed, epoch,
index), never from global RNG state, so the pixels of item i in epoch e are the same whether the run
is fresh, resumed, or split over any number of ranks or loader workers.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from distillkit.data.sources import FolderSource, HFSource, Unusable, describe_source
from distillkit.errors import DataError

MAX_CONSECUTIVE_FAILURES = 1000
"""Give up after this many unusable items in a row: at that point the column or format is wrong, and
scanning the remaining millions of rows would only delay the error."""

_KEEP_EXAMPLES = 20


# -- the item pipeline --------------------------------------------------------------------------------

def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the random augmentation of item ``index`` in ``epoch``.

    Hashed rather than added (``seed + epoch + index``) so that neighbouring items, epochs and run
    seeds do not share crops.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparent pixels become white rather than whatever colour the
    encoder left under them (often black), which is what a viewer would show."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I;16"):  # 16-bit grayscale PNG: convert() would clip it to near-white
        arr = (np.asarray(image, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model, plus the geometry SDXL's micro-conditioning asks for."""

    pixels: torch.Tensor  # (3, R, R) float32 in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) in the resized (and, if flipped, mirrored) image


def prepare_image(image: Image.Image, resolution: int, *, center_crop: bool = True, random_flip: bool = False,
                  generator: Optional[torch.Generator] = None) -> Prepared:
    """Resize the shorter side to ``resolution`` (bicubic; PIL widens the kernel when shrinking, so it
    is antialiased), crop a square, optionally mirror, and scale to [-1, 1].

    Random choices (crop offsets, then the flip) come from ``generator`` only; it is required when
    either is enabled, so there is no path that silently falls back to global RNG state.
    """
    if (random_flip or not center_crop) and generator is None:
        raise ValueError("a random crop or flip needs a torch.Generator for reproducibility")
    image = to_rgb(image)
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top = int(torch.randint(0, new_h - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - resolution + 1, (1,), generator=generator))
    arr = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    if random_flip and bool(torch.rand(1, generator=generator) < 0.5):
        pixels = pixels.flip(-1)
        left = new_w - left - resolution
    return Prepared(pixels, (h, w), (top, left))


# -- the dataset -----------------------------------------------------------------------------------------

class ImageTextDataset(torch.utils.data.Dataset):
    """``{"pixels": (3, R, R) in [-1, 1], "prompt": str, ...}`` items over a folder or HF dataset.

    Build with :meth:`from_folder` or :meth:`from_dataset`. ``get(index, epoch)`` is the pure lookup the
    batch source uses; ``dataset[index]`` is the same at the epoch last given to :meth:`set_epoch`,
    for use with a plain ``torch.utils.data.DataLoader``.
    """

    def __init__(self, source: Union[FolderSource, HFSource], *, resolution: int = 512, center_crop: bool = True,
                 random_flip: bool = False, strict: bool = False, seed: int = 0):
        self.source = source
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.strict, self.seed, self.epoch = strict, seed, 0
        self.skipped: Counter[str] = Counter()
        self.skipped_examples: list[str] = []  # the first few, so a log line can say which files
        self._bad: set[int] = set()
        if source.problems and strict:
            shown = "\n".join(f"  - {p}" for p in source.problems[:10])
            more = f"\n  ... and {len(source.problems) - 10} more" if len(source.problems) > 10 else ""
            raise DataError(f"{len(source.problems)} unusable item(s) in {describe_source(source)} "
                            f"(strict = true):\n{shown}{more}")
        for problem in source.problems:
            self._count(problem)
        if len(source) == 0:
            raise DataError(f"no usable items in {describe_source(source)}: skipped {dict(self.skipped)}")

    @classmethod
    def from_folder(cls, folder: Union[str, os.PathLike], *, caption_column: str = "text",
                    **kwargs) -> "ImageTextDataset":
        return cls(FolderSource(folder, caption_column), **kwargs)

    @classmethod
    def from_dataset(cls, name_or_path: Union[str, os.PathLike], *, split: str = "train", image_column: str = "image",
                     caption_column: str = "text", **kwargs) -> "ImageTextDataset":
        return cls(HFSource(str(name_or_path), split, image_column, caption_column), **kwargs)

    @property
    def lazy(self) -> bool:
        """True when items are checked only as they are loaded, so ``skipped`` can still grow."""
        return isinstance(self.source, HFSource)

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def get(self, index: int, epoch: int = 0) -> dict:
        """Item ``index`` with the augmentation of ``epoch``; if it cannot be loaded, the next usable
        index (wrapping around) in its place, augmented with ``index``'s generator."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        failures = 0
        for offset in range(n):
            j = (index + offset) % n
            if j in self._bad:
                continue
            try:
                image, caption = self.source.fetch(j)
            except Unusable as u:
                if self.strict:
                    raise DataError(f"{u} (strict = true)") from None
                self._bad.add(j)
                self._count(u)
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise DataError(f"{failures} unusable items in a row from index {index} in "
                                    f"{describe_source(self.source)}, e.g. {u}; "
                                    f"check data.image_column / data.caption_column") from None
                continue
            g = torch.Generator().manual_seed(item_seed(self.seed, epoch, index))
            if isinstance(caption, list):  # one of several captions; drawn before the crop, always
                caption = caption[int(torch.randint(0, len(caption), (1,), generator=g))]
            prepared = prepare_image(image, self.resolution, center_crop=self.center_crop,
                                     random_flip=self.random_flip, generator=g)
            return {"pixels": prepared.pixels, "prompt": caption, "original_size": prepared.original_size,
                    "crop_top_left": prepared.crop_top_left, "index": j}
        raise DataError(f"no usable items in {describe_source(self.source)}: skipped {dict(self.skipped)}")

    def _count(self, problem: Unusable) -> None:
        self.skipped[problem.reason] += 1
        if len(self.skipped_examples) < _KEEP_EXAMPLES:
            self.skipped_examples.append(str(problem))

