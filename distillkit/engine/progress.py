"""The progress bar of :meth:`Engine.fit` (drawn by the CLI; a library call is quiet by default)."""

from __future__ import annotations


class StepProgress:
    """A rich progress bar over training steps showing the run's name and the latest total loss.

    The run name is escaped: a name such as ``add[xl]`` must show as written, not as rich markup."""

    def __init__(self, name: str, total: int, completed: int, enabled: bool):
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.name = escape(name)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), disable=not enabled, transient=False)
        self.task = self.bar.add_task(f"[bold]{self.name}", total=total, completed=completed)

    def __enter__(self) -> "StepProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def advance(self, metrics: dict) -> None:
        total = metrics.get("generator/total")
        self.bar.update(self.task, advance=1, description=f"[bold]{self.name}[/]" +
                        (f" loss {total:.4g}" if total is not None else ""))
