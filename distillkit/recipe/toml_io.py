"""Recipe files in and out: TOML parsing with positions a user can jump to, and TOML writing of a resolved recipe.

Reading forgives what editors do (a UTF-8 byte-order mark) and recognises what people paste by mistake
(YAML, JSON), saying so instead of reporting a TOML syntax error at line 1. Writing fills in every
default, the plugins' ``params`` included (:func:`dump_resolved`), so a run folder's ``recipe.toml``
repeats the run even after defaults change.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from distillkit.errors import RecipeError
from distillkit.recipe.problems import Problem, short

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.recipe.resolve import ResolvedRecipe
    from distillkit.recipe.schema import Recipe

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_BOM = "\ufeff"
_TOML_EXAMPLE = 'e.g. [model] on one line, then family = "sd15" and pretrained = "runs/fixtures/sd15" below it'
_YAML_KEY = re.compile(r"^\s*(-\s+)?[A-Za-z_][\w.-]*\s*:(\s|$)")


# ================================================================================================
# Reading
# ================================================================================================
def read_toml(path: str | Path) -> dict:
    """Parse a recipe file. A syntax error names the file, line and column so an editor can jump there."""
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError([Problem(where, "no such recipe file (a relative path is taken from the working "
                                          f"directory, {Path.cwd()})")], where) from None
    except IsADirectoryError:
        raise RecipeError([Problem(where, "is a folder; give the path of a .toml recipe file")], where) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem(where, f"not UTF-8 text (byte {exc.start}); save the recipe as UTF-8")],
                          where) from None
    text = text.removeprefix(_BOM)  # Windows editors save "UTF-8 with BOM"; TOML itself forbids the mark
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([_other_format(path, text) or _toml_error(path, text, exc)], where) from None


def _other_format(path: Path, text: str) -> Problem | None:
    """A problem saying the file is JSON or YAML, when it clearly is one of those rather than broken TOML."""
    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            return Problem(str(path), f"this looks like JSON; recipes are TOML ({_TOML_EXAMPLE})")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    tomlish = any("=" in ln or ln.lstrip().startswith("[") for ln in lines)
    if lines and (lines[0].strip() == "---" or (not tomlish and any(_YAML_KEY.match(ln) for ln in lines))):
        return Problem(str(path), f"this looks like YAML; recipes are TOML ({_TOML_EXAMPLE}); YAML's "
                                  f"'key: value' is written 'key = value' and strings are quoted")
    return None


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> Problem:
    # Python >= 3.14 carries the position as attributes; older versions only in the message.
    msg = getattr(exc, "msg", None) or str(exc)
    line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    m = _TOML_POSITION.search(msg)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        msg = msg[: m.start()]
    if line is None:
        return Problem(str(path), f"TOML syntax error: {msg}")
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    where = f" in: {short(shown)}" if shown else ""
    return Problem(f"{path}:{line}:{col}", f"TOML syntax error: {msg} (line {line}, column {col}{where})")


# ================================================================================================
# Writing
# ================================================================================================
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any, where: str) -> str:
    if isinstance(v, enum.Enum):  # a plugin's Config may use enums: write the value the user would type
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # '1e-05', '0.999', '2.0': all valid TOML floats
    if isinstance(v, PurePath):
        v = str(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime.date, datetime.time)):  # TOML's own date/time literals (datetime is a date)
        return v.isoformat()
    if isinstance(v, (set, frozenset)):
        v = sorted(v, key=repr)
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise ValueError(f"{where}: a list with a null cannot be written as TOML")
        return "[" + ", ".join(_toml_value(x, f"{where}[{k}]") for k, x in enumerate(v)) + "]"
    if isinstance(v, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(x, f'{where}.{k}')}" for k, x in v.items() if x is not None]
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"{where}: cannot write a {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _emit(lines: list[str], path: list[str], table: Mapping, header: str | None) -> None:
    if header is not None:
        lines.extend(["", header])
    where = ".".join(path) or "(recipe)"
    for k, v in table.items():
        if v is None or isinstance(v, Mapping) or _is_table_array(v):
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v, f'{where}.{k}')}")
    for k, v in table.items():
        sub = path + [_toml_key(k)]
        if isinstance(v, Mapping):
            _emit(lines, sub, v, f"[{'.'.join(sub)}]")
        elif _is_table_array(v):
            for item in v:
                _emit(lines, sub, item, f"[[{'.'.join(sub)}]]")


def _dump(data: Mapping, title: str) -> str:
    lines = [f"# {title}"]
    _emit(lines, [], data, None)
    return "\n".join(lines).strip() + "\n"


def dump_recipe(recipe: "Recipe") -> str:
    """The recipe with every schema default filled in, as TOML that reads back to an equal :class:`Recipe`.

    ``params`` tables are written as given (only the plugins know their defaults: see :func:`dump_resolved`).
    TOML has no null, so None-valued keys are left out and read back as their default. That is exact
    for every field whose default is None.
    """
    return _dump(recipe.model_dump(mode="python"), "distillkit recipe, fully resolved: every default is written out")


def dump_resolved(resolved: "ResolvedRecipe") -> str:
    """:func:`dump_recipe` with each loss's and critic's ``params`` replaced by its validated Config, so the
    plugins' defaults are written out too. Loading the text again gives equal configs.

    Entries that are switched off (``enabled = false``) keep their ``params`` as written: they were checked
    but are not part of the run. Keys are written under their aliases, the names a recipe uses.
    """
    data = resolved.recipe.model_dump(mode="python")
    for section, resolved_entries in (("losses", resolved.losses), ("critics", resolved.critics)):
        entries = getattr(resolved.recipe, section)
        for r in resolved_entries:
            i = next(k for k, e in enumerate(entries) if e is r.entry)
            data[section][i]["params"] = r.config.model_dump(mode="python", by_alias=True)
    return _dump(data, "distillkit recipe, fully resolved: every default is written out, plugin params included")
