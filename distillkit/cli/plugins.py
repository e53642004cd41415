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
    table = Table(title="distillkit plugins", header_style="bold", show_lines=True)
    table.add_column("plugin", no_wrap=True)
    table.add_column("distribution", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("provides")
    for name, info in sorted(reg.plugins.items()):
        if info.error:
            provides = f"[red]failed to import: {info.error.splitlines()[0]}[/]"
        else:
            lines = [f"{kind}: {', '.join(items)}" for kind, items in
                     (("losses", reg.provided_by(name, "loss")), ("critics", reg.provided_by(name, "critic")),
                      ("families", reg.provided_by(name, "backbone"))) if items]
            provides = "\n".join(lines) or "[dim](nothing registered yet)[/]"
        table.add_row(name, info.distribution or "-", info.version or "-", provides)
    out = Console()
    out.print(table)
    for problem in reg.problems:
        out.print(f"[red]problem:[/] {problem}")
    return 0
