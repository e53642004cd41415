"""Printing for the CLI, where text from users and plugins is never read as rich markup.

rich treats ``[word]`` as a style tag: an unescaped message loses it (``losses[1]`` prints as
``losses``, ``distillkit[datasets]`` as ``distillkit``) or, for ``[/x]``, raises a MarkupError in
the middle of printing an error. Every message, path, name and value therefore goes through
:func:`esc` (or into a :class:`rich.text.Text`), and markup is used only for our own styling. Emoji
codes (``:cat:``) are off for the same reason.

The consoles are built when needed (importing rich costs ~75 ms that ``distillkit --help`` need not
pay), each time: building one is cheap and then follows the current ``COLUMNS`` and ``sys.stdout``.
"""

from __future__ import annotations


def err_console():
    """stderr: errors, warnings, progress and notes."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, emoji=False)


def out_console():
    """stdout: a command's result (the ``plugins`` table, ``validate``'s summary).

    Written to a file or a pipe (a log, CI), rich would fold wide tables into 80 columns until the names
    vanish; there, lines may be as long as the table needs (up to 200 characters)."""
    import os
    import sys

    from rich.console import Console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, emoji=False, width=width)


def esc(value) -> str:
    """``value`` as text that rich prints verbatim inside markup."""
    from rich.markup import escape

    return escape(str(value))


def text(value, style: str = ""):
    """A table cell that is never parsed as markup."""
    from rich.text import Text

    return Text(str(value), style=style)


def error(message) -> None:
    err_console().print(f"[bold red]error:[/] {esc(message)}", soft_wrap=True)


def warning(message) -> None:
    err_console().print(f"[yellow]warning:[/] {esc(message)}", soft_wrap=True)


def note(message, style: str = "") -> None:
    """A line on stderr; ``style`` (ours, e.g. "yellow") colours it, the text itself stays verbatim."""
    body = esc(message)
    err_console().print(f"[{style}]{body}[/]" if style else body, soft_wrap=True)
