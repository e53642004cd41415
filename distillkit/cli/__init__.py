"""``distillkit`` command line: one module per verb, one place that turns errors into messages.

A :class:`~distillkit.errors.DistillkitError` (bad recipe, unknown plugin, missing file, NaN streak)
is printed as one red ``error:`` block with the error's exit code and no traceback (``--debug``, or
``DISTILLKIT_DEBUG=1``, adds the traceback); anything else is a bug and keeps its traceback. Messages
are printed verbatim, never as rich markup (see :mod:`distillkit.cli.output`).

Start-up is kept cheap: this module and the verb modules import neither torch nor any plugin, so
``distillkit --help`` is instant; each verb imports what it needs when it runs. A verb module has
``add_parser(sub)``, which sets ``func`` (called with the parsed arguments, returns the exit code) and
may set ``setup_libraries=False``: by default the hub libraries' progress bars are silenced before the
verb runs, which imports diffusers; verbs that load no model (``validate``, ``plugins``) opt out, and
``run`` does it itself after installing its signal handlers.
"""

from __future__ import annotations

import argparse
import os
import sys

from distillkit.errors import DistillkitError


def __getattr__(name: str):
    if name == "console":  # ``from distillkit.cli import console``: the stderr console, built on first use
        from distillkit.cli.output import err_console

        return err_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parser() -> argparse.ArgumentParser:
    from distillkit.cli import compare, eval as eval_, plugins, run, sample, teach, validate

    parser = argparse.ArgumentParser(prog="distillkit", description="Distil text-to-image diffusion models "
                                     "into 1-4-step generators.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="print the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, validate, plugins, sample, teach, eval_, compare):
        module.add_parser(sub)
    _add_debug_everywhere(sub)
    return parser


def _add_debug_everywhere(subparsers) -> None:
    """``--debug`` is accepted after any verb too (``distillkit validate r.toml --debug``)."""
    for parser in set(subparsers.choices.values()):
        if "--debug" not in parser._option_string_actions:
            # SUPPRESS: a verb that was not given --debug must not reset the top-level flag to False
            parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="print the traceback of user errors too")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug_everywhere(action)


def _version() -> str:
    from distillkit import __version__

    return f"distillkit {__version__}"


def quiet_library_progress() -> None:
    """The CLI draws its own progress; per-file "Loading weights" bars from the hub libraries are noise."""
    import importlib

    for module, fn in (("huggingface_hub.utils", "disable_progress_bars"),
                       ("transformers.utils.logging", "disable_progress_bar"),
                       ("diffusers.utils.logging", "disable_progress_bar")):
        try:
            getattr(importlib.import_module(module), fn)()
        except (ImportError, AttributeError):
            pass


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("DISTILLKIT_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> int:
    from distillkit.cli import output

    # Offline by default: a hub id with no hub must fail fast, not retry for minutes.
    if os.environ.get("DISTILLKIT_ONLINE", "") not in ("1", "true"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "setup_libraries", True):
            quiet_library_progress()
        return int(args.func(args) or 0)
    except DistillkitError as exc:
        if _debug(args):
            import traceback

            traceback.print_exc(file=sys.stderr)
        output.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        output.note("interrupted", "yellow")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
