"""Prompt lists for data-free training: a text file, one prompt per line, or an inline list.

Data-free methods (SiD, DMD2's generator side, SDS) see no images at all, so the prompt list *is* the
training set. A broken list therefore deserves the same care as a broken image folder: an empty file
would otherwise train on nothing, and a file saved in a legacy encoding would otherwise fail deep inside
the tokenizer, or worse, train on mojibake. Both are reported here, naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from distillkit.errors import DataError

_BOM = b"\xef\xbb\xbf"


def load_prompts(spec: Union[str, os.PathLike, Sequence[str]]) -> list[str]:
    """Return the prompts named by ``spec``.

    A ``str`` or path is a UTF-8 file with one prompt per line; surrounding whitespace is stripped,
    and blank lines and lines starting with ``#`` are skipped, so a prompt file can carry comments.
    A list is taken as the prompts themselves; an empty entry there is an error rather than skipped,
    since in a recipe it is almost always a stray comma or an unfilled template.
    """
    if isinstance(spec, (str, os.PathLike)):
        return _read_prompt_file(Path(spec))
    prompts = list(spec)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise DataError(f"data.prompts[{i}] is a {type(p).__name__}, not a string")
        if not p.strip():
            raise DataError(f"data.prompts[{i}] is an empty prompt: remove it or fill it in")
    if not prompts:
        raise DataError("data.prompts is an empty list: give at least one prompt")
    return prompts


def _read_prompt_file(path: Path) -> list[str]:
    if not path.is_file():
        hint = ("" if path.suffix else
                f"; for inline prompts write a list, e.g. prompts = [\"{path}\"]")
        raise DataError(f"prompt file {str(path)!r} not found{hint}")
    raw = path.read_bytes()
    if raw.startswith(_BOM):  # editors on Windows add one; it is not part of the first prompt
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"prompt file {str(path)!r} is not valid UTF-8: line {line} has the byte "
                        f"0x{raw[e.start]:02x}; re-save the file as UTF-8") from None
    prompts = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
    if not prompts:
        raise DataError(f"prompt file {str(path)!r} holds no prompts (only blank lines or # comments)")
    return prompts
