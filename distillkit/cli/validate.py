"""``distillkit validate RECIPE``: check a recipe completely without loading any model."""

from __future__ import annotations

from distillkit.cli.common import add_recipe_args


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a recipe (all errors at once) without loading models")
    add_recipe_args(p)
    p.set_defaults(func=validate, setup_libraries=False)


def validate(args) -> int:
    from rich.table import Table

    from distillkit.cli import output
    from distillkit.recipe.load import load_recipe

    resolved = load_recipe(args.recipe, args.overrides)
    r = resolved.recipe
    table = Table(title=output.text(f"{args.recipe}: valid"), show_header=True, header_style="bold")
    table.add_column("role")
    table.add_column("what")
    table.add_column("settings")

    def row(*cells) -> None:  # recipe values are user text: never markup
        table.add_row(*(output.text(c) for c in cells))

    row("model", r.model.family, f"{r.model.pretrained} ({r.model.dtype})")
    row("student", f"{len(r.student.timesteps)} steps {r.student.timesteps}",
        f"init={r.student.init} input={r.student.input} lora={bool(r.student.lora)} lr={r.student.optim.lr:g}")
    row("teacher", "frozen", f"guidance_scale={r.teacher.guidance_scale:g}")
    for rc in resolved.critics:
        row("critic", f"{rc.entry.name} ({rc.id})", f"updates/step={rc.entry.updates_per_step} lr={rc.entry.optim.lr:g}")
    for rl in resolved.losses:
        w = rl.entry.weight if isinstance(rl.entry.weight, (int, float)) else "schedule"
        row("loss", rl.entry.name, f"weight={w} " + (f"critic={rl.critic_id}" if rl.critic_id else ""))
    output.out_console().print(table)
    for warning in resolved.warnings:
        output.warning(warning)
    return 0
