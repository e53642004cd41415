"""Errors a user is meant to read.

Every exception here is caught by the CLI and printed as one red line (no traceback) with its exit
code, so the message itself must say what was wrong *and* what to do about it.
"""

from __future__ import annotations


class DistillkitError(Exception):
    """Base class: an error that is the user's to fix, shown without a traceback."""

    exit_code = 1


class RecipeError(DistillkitError):
    """A recipe failed validation. Carries *all* problems at once, each naming its field path."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class PluginError(DistillkitError):
    """A plugin could not be loaded, registered something invalid, or a name is unknown."""

    exit_code = 2


class UsageError(DistillkitError):
    """A command-line argument that can only be checked once something is loaded (exit 2, as argparse)."""

    exit_code = 2


class ModelLoadError(DistillkitError):
    """A model, tokenizer or weight file could not be loaded (missing file, broken offline tokenizer...)."""

    exit_code = 3


class DataError(DistillkitError):
    """Training data is missing, empty or unreadable."""

    exit_code = 3


class RunFolderError(DistillkitError):
    """The run folder cannot be used as asked: another process holds it, it holds a run with other settings,
    none of its checkpoints can be trusted, or it cannot be written (read-only, a full disk). Exit 2, as for
    the recipe's ``run.output_dir``/``run.resume``, which is where the fix usually lies."""

    exit_code = 2


class NonFiniteLossError(DistillkitError):
    """Training produced NaN/Inf losses too many steps in a row; the last good checkpoint is kept."""

    exit_code = 4
