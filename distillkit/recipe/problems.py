"""One problem in a recipe, as data: the field it concerns and what to do about it.

Every stage of recipe loading (TOML, ``--set``, the schema, name resolution, checks against the model
folder and the machine) produces :class:`Problem` objects, and a :class:`~distillkit.errors.RecipeError`
carries the list. A problem *is* its printable line (a ``str`` subclass), so callers that print, compare
or join problems as text keep working, while code that needs the field path reads ``problem.path``
instead of parsing the line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Problem(str):
    """``path``: the field in the recipe's own words (``losses[1].params.scale``; a file name for a file
    problem; "" for the recipe as a whole). ``message``: what is wrong, the bad value and the fix.
    The text is ``"<path>: <message>"``."""

    path: str
    message: str

    def __new__(cls, path: str, message: str) -> "Problem":
        self = super().__new__(cls, f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # copy/pickle rebuild through __new__(path, message)
        return (self.path, self.message)

    def __repr__(self) -> str:
        return f"Problem(path={self.path!r}, message={self.message!r})"

    @classmethod
    def of(cls, item: Any) -> "Problem":
        """Accept what a plugin hook may return: a Problem, a ``(path, message)`` pair, or a plain line."""
        if isinstance(item, Problem):
            return item
        if isinstance(item, tuple) and len(item) == 2:
            return cls(str(item[0]), str(item[1]))
        return cls("", str(item))


class RecipeProblems(ValueError):
    """Raised by a schema validator with several structured problems at once (pydantic keeps the exception
    object in the error's context, so the problems reach the message formatter intact)."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))  # only for a caller that bypasses the formatter


def short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters: a problem line quotes values, not whole files."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def got(value: Any) -> str:
    return f" (got {short(repr(value))})"


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def relative_note(path: str | os.PathLike) -> str:
    """`` (a relative path is taken from the working directory, /cwd)`` for a relative ``path``, else ""."""
    if Path(path).is_absolute():
        return ""
    return f" (a relative path is taken from the working directory, {Path.cwd()})"


def unique(problems: Iterable[Problem]) -> list[Problem]:
    """Each problem once, in first-seen order (two stages may find the same thing)."""
    return list(dict.fromkeys(problems))
