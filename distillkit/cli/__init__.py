"""``distillkit`` command line: one module per verb, one place that turns errors into messages.

A :class:`~distillkit.errors.DistillkitError` (bad recipe, unknown plugin, missing file, NaN streak)
is printed as one red ``error:`` block with the error's exit code and no traceback; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from distillkit.errors import DistillkitError

console = Console(stderr=True, highlight=False)


def _parser() -> argparse.ArgumentParser:
    from distillkit.cli import plugins, run, sample, validate

    parser = argparse.ArgumentParser(prog="distillkit", description="Distil text-to-image diffusion models "
                                     "into 1-4-step generators.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, validate, plugins, sample):
        module.add_parser(sub)
    return parser


def _version() -> str:
    from distillkit import __version__

    return f"distillkit {__version__}"


def _quiet_library_progress() -> None:
    """The CLI draws its own progress; per-file "Loading weights" bars from the hub libraries are noise."""
    import importlib

    for module, fn in (("huggingface_hub.utils", "disable_progress_bars"),
                       ("transformers.utils.logging", "disable_progress_bar"),
                       ("diffusers.utils.logging", "disable_progress_bar")):
        try:
            getattr(importlib.import_module(module), fn)()
        except (ImportError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    # Offline by default: a hub id with no hub must fail fast, not retry for minutes (environment.md).
    if os.environ.get("DISTILLKIT_ONLINE", "") not in ("1", "true"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_library_progress()
    try:
        return int(args.func(args) or 0)
    except DistillkitError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
