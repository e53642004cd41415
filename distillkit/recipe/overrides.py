"""``--set a.b[0].c=value``: command-line overrides applied to a parsed recipe before validation.

Paths use the recipe's own words (dotted keys, list indices as ``[N]`` or ``.N``), values are TOML
values when they parse as one and bare strings otherwise, so shell quoting stays light. Every override
that cannot be applied is reported, all at once, with the part of the path that went wrong.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillkit.errors import RecipeError
from distillkit.recipe.problems import Problem, short

_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")
_SET_EXAMPLE = "e.g. --set student.optim.lr=1e-5 or --set losses[0].weight=2.5"


@dataclass(frozen=True)
class _Key:
    name: str  # a table key; all digits also means a list index when the container is a list


@dataclass(frozen=True)
class _Index:
    index: int  # an explicit [N]


def _parse_path(path: str) -> list[_Key | _Index] | None:
    tokens: list[_Key | _Index] = []
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            return None
        tokens.append(_Key(m.group(1)))
        tokens.extend(_Index(int(i)) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tokens


def _parse_value(raw: str) -> Any:
    """A TOML value when ``raw`` is one (``true``, ``1e-5``, ``[1, 4]``, ``{rank = 4}``), else ``raw`` itself."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    # "x\nw = 1" parses into two keys: that was not one value, so keep the text as the user wrote it
    return parsed["v"] if list(parsed) == ["v"] else raw


def _render(tokens: Sequence[_Key | _Index]) -> str:
    out = ""
    for tok in tokens:
        out += f"[{tok.index}]" if isinstance(tok, _Index) else (f".{tok.name}" if out else tok.name)
    return out


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({short(repr(value))})"


def _apply_one(data: dict, override: str) -> Problem | None:
    """Apply one ``KEY=VALUE`` in place; return the problem instead when it cannot be applied."""
    head = f"--set {override!r}"
    if "=" not in override:
        return Problem(head, f"expected KEY=VALUE, {_SET_EXAMPLE}")
    path, raw = (s.strip() for s in override.split("=", 1))
    if not path:
        return Problem(head, f"nothing before '='; name the key to set, {_SET_EXAMPLE}")
    tokens = _parse_path(path)
    if tokens is None:
        return Problem(head, f"malformed key {path!r}; use dotted keys with optional list indices, {_SET_EXAMPLE}")
    remove = raw == ""  # `--set key=` deletes the key so its default applies (TOML has no null)
    value = _parse_value(raw)
    node: Any = data
    for pos, tok in enumerate(tokens):
        here = _render(tokens[:pos]) or "the recipe"
        last = pos == len(tokens) - 1
        as_index = isinstance(tok, _Index) or (isinstance(node, list) and tok.name.isdigit())
        if as_index:
            index = tok.index if isinstance(tok, _Index) else int(tok.name)
            if not isinstance(node, list):
                return Problem(head, f"{here} is {_kind(node)}, not a list, so it cannot be indexed with [{index}]; "
                                     f"use a key name instead")
            if index >= len(node):
                valid = f"valid: 0..{len(node) - 1}" if node else "the list is empty"
                return Problem(head, f"index {index} is out of range for {here}, which has {len(node)} "
                                     f"entr{'y' if len(node) == 1 else 'ies'} ({valid}); add the entry to the "
                                     f"recipe file first")
            if last:
                if remove:
                    return Problem(head, f"an empty value removes a key, but {_render(tokens)} is a list entry")
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            return Problem(head, f"{here} is {_kind(node)}, not a table, so it has no key {tok.name!r}")
        if last:
            if remove:
                node.pop(tok.name, None)
            else:
                node[tok.name] = value
            break
        if tok.name not in node:
            nxt = tokens[pos + 1]
            if isinstance(nxt, _Index) or nxt.name.isdigit():
                return Problem(head, f"{_render(tokens[:pos + 1])} is not in the recipe, so it cannot be indexed; "
                                     f"add the list to the recipe file first")
            node[tok.name] = {}  # a new table; the schema rejects it if the key is not allowed there
        node = node[tok.name]
    return None


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``a.b[0].c=value`` applied, in order (later ones win).

    The value is read as a TOML value when it is one (``true``, ``1e-5``, ``[1, 4]``, ``"text"``,
    ``{rank = 4}``), otherwise taken as a bare string (``sd15``, ``runs/x``), so shell quoting stays light.
    An empty value (``a.b=``) removes the key, so the schema default applies; ``a.b=""`` sets "".
    New tables may be created (the schema then rejects unknown keys); lists must already exist.
    """
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    out = copy.deepcopy(data)
    problems = [p for p in (_apply_one(out, o) for o in overrides) if p]
    if problems:
        raise RecipeError(problems, "--set")
    return out
