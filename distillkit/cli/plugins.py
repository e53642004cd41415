"""``distillkit plugins``: what is installed, what each plugin registers, and what failed to load."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed plugins with their losses, critics and model families")
    p.set_defaults(func=plugins)


def plugins(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from distillkit.registry import Registry

    reg = Registry.discover()
    table = Table(title="distillkit plugins", header_style="bold")
    for col in ("plugin", "distribution", "version", "losses", "critics", "families", "hooks"):
        table.add_column(col)
    for name, info in sorted(reg.plugins.items()):
        losses, critics, families = (", ".join(reg.provided_by(name, kind)) for kind in ("loss", "critic", "backbone"))
        if info.error:
            table.add_row(f"[red]{name}[/]", info.distribution or "", info.version or "",
                          f"[red]failed to import: {info.error.splitlines()[0]}[/]", "", "", "")
        else:
            table.add_row(name, info.distribution or "", info.version or "", losses or "-", critics or "-",
                          families or "-", ", ".join(info.hooks))
    out = Console()
    out.print(table)
    for problem in reg.problems:
        out.print(f"[red]problem:[/] {problem}")
    return 0
