"""Where image-caption items come from: an image folder or a Hugging Face ``datasets`` dataset.

Each source turns an index into a decoded image and its caption, or raises :class:`Unusable` with a
short reason that the dataset counts (see :mod:`distillkit.data.images` for why bad items are skipped
and counted rather than fatal). Decoding honours EXIF orientation and loads the whole file, so a
truncated image fails here, where it can be named, not inside a training step.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from PIL import Image, ImageOps

from distillkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def decode_image(source: Union[str, os.PathLike, bytes, io.BytesIO]) -> Image.Image:
    """Open and fully decode an image (so truncation surfaces here), honouring EXIF orientation:
    phone photos are stored sideways with a rotate flag, and training on them sideways is a bug."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp) as im:
        im.load()
        return ImageOps.exif_transpose(im)


# -- sources --------------------------------------------------------------------------------------------

class Unusable(Exception):
    """One item cannot be used; ``reason`` is the short key counted in ``skipped``."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        super().__init__(where, reason)
        self.where, self.reason, self.detail = where, reason, detail

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def _error_detail(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _caption_or_raise(value: Any, where: str) -> Union[str, list[str]]:
    """A caption string, or a list of alternatives (COCO-style); anything else is a missing caption."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, (list, tuple)):
        options = [v.strip() for v in value if isinstance(v, str) and v.strip()]
        if options:
            return options
    raise Unusable(where, "missing caption")


@dataclass(frozen=True)
class _Record:
    path: Path
    caption: Union[str, list[str]]


class FolderSource:
    """Records of an image folder, checked when built so the item count is known up front."""

    kind = "folder"

    def __init__(self, folder: Union[str, os.PathLike], caption_column: str = "text"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"image folder {str(self.folder)!r} does not exist or is not a folder")
        self.caption_column = caption_column
        self.problems: list[Unusable] = []
        metadata = self.folder / "metadata.jsonl"
        candidates = self._from_metadata(metadata) if metadata.is_file() else self._from_sidecars()
        if not candidates and not self.problems:
            raise DataError(f"image folder {str(self.folder)!r} holds no metadata.jsonl and no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.records: list[_Record] = []
        for rec in candidates:
            try:
                self._verify(rec.path)
            except Unusable as u:
                self.problems.append(u)
            else:
                self.records.append(rec)

    def _from_metadata(self, metadata: Path) -> list[_Record]:
        records = []
        with open(metadata, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{metadata}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                    if not isinstance(entry, dict):
                        raise ValueError(f"a JSON {type(entry).__name__}, not an object")
                except ValueError as e:
                    self.problems.append(Unusable(where, "malformed metadata line", _error_detail(e)))
                    continue
                name = entry.get("file_name")
                if not isinstance(name, str) or not name:
                    self.problems.append(Unusable(where, "missing file_name"))
                    continue
                path = self.folder / name
                try:
                    caption = _caption_or_raise(entry.get(self.caption_column), str(path))
                except Unusable as u:
                    u.detail = f"no {self.caption_column!r} in {metadata.name} line {lineno}"
                    self.problems.append(u)
                    continue
                records.append(_Record(path, caption))
        return records

    def _from_sidecars(self) -> list[_Record]:
        images = sorted((p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                        key=lambda p: p.relative_to(self.folder).as_posix())
        records = []
        for path in images:
            txt = path.with_suffix(".txt")
            try:
                text = txt.read_text(encoding="utf-8") if txt.is_file() else None
                records.append(_Record(path, _caption_or_raise(text, str(path))))
            except UnicodeDecodeError as e:
                self.problems.append(Unusable(str(path), "missing caption", f"{txt.name} is not UTF-8: {e.reason}"))
            except Unusable as u:
                u.detail = f"no {txt.name} beside it"
                self.problems.append(u)
        return records

    @staticmethod
    def _verify(path: Path) -> None:
        if not path.is_file():
            raise Unusable(str(path), "missing image file")
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ... for broken files
            raise Unusable(str(path), "unreadable image", _error_detail(e)) from None

    def __len__(self) -> int:
        return len(self.records)

    def fetch(self, index: int) -> tuple[Image.Image, Union[str, list[str]]]:
        rec = self.records[index]
        try:
            return decode_image(rec.path), rec.caption
        except Exception as e:  # verify() passes some truncated JPEGs; decoding is the real test
            raise Unusable(str(rec.path), "unreadable image", _error_detail(e)) from None


class HFSource:
    """Rows of a ``datasets`` dataset, checked lazily: building never reads an image."""

    kind = "dataset"

    def __init__(self, name_or_path: str, split: str = "train", image_column: str = "image",
                 caption_column: str = "text"):
        try:
            import datasets
        except ImportError:
            raise DataError("data.dataset needs the 'datasets' package: pip install 'distillkit[datasets]'") from None
        self.name, self.split = str(name_or_path), split
        self.image_column, self.caption_column = image_column, caption_column
        ds = self._load(datasets)
        missing = [c for c in (image_column, caption_column) if c not in ds.column_names]
        if missing:
            raise DataError(f"dataset {self.name!r} has no column(s) {missing}; its columns are {ds.column_names}: "
                            f"set data.image_column / data.caption_column")
        feature = ds.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            # decode ourselves, so that a corrupt image is an Unusable item rather than an exception
            # thrown from inside datasets' row formatting that would also lose the caption
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds = ds
        self.problems: list[Unusable] = []  # lazily found problems are reported at load time instead

    def _load(self, datasets):
        path = Path(self.name).expanduser()
        try:
            if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if self.split not in ds:
                        raise DataError(f"dataset {self.name!r} has no split {self.split!r}; "
                                        f"its splits are {list(ds)}: set data.dataset_split")
                    ds = ds[self.split]
                return ds
            return datasets.load_dataset(self.name, split=self.split)
        except DataError:
            raise
        except Exception as e:
            offline = " (this machine may be offline: use a local path)" if not path.exists() else ""
            raise DataError(f"could not load dataset {self.name!r}, split {self.split!r}{offline}: "
                            f"{_error_detail(e)}") from None

    def __len__(self) -> int:
        return len(self.ds)

    def fetch(self, index: int) -> tuple[Image.Image, Union[str, list[str]]]:
        row = self.ds[index]
        value = row[self.image_column]
        where = f"dataset {self.name!r} [{self.split}] row {index}"
        if isinstance(value, dict) and value.get("path"):
            where += f" ({value['path']})"
        caption = _caption_or_raise(row[self.caption_column], where)
        try:
            return self._decode(value), caption
        except Unusable:
            raise
        except Exception as e:
            raise Unusable(where, "unreadable image", _error_detail(e)) from None

    def _decode(self, value: Any) -> Image.Image:
        if isinstance(value, Image.Image):
            value.load()
            return ImageOps.exif_transpose(value)
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
            if data is None and not path:
                raise ValueError("image entry has neither bytes nor path")
            return decode_image(data if data is not None else path)
        if isinstance(value, (bytes, str)):
            return decode_image(value)
        raise ValueError(f"unsupported image value of type {type(value).__name__}")




def describe_source(source: Union[FolderSource, HFSource]) -> str:
    if isinstance(source, FolderSource):
        return f"image folder {str(source.folder)!r}"
    return f"dataset {source.name!r} [{source.split}]"
