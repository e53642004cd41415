"""``distillkit run RECIPE``: train, checkpointing and sampling as the recipe says."""

from __future__ import annotations

import signal

from distillkit.cli.common import add_recipe_args


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train a student from a recipe")
    add_recipe_args(p)
    p.set_defaults(func=run)


def _sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by the kill/resume test
    raise KeyboardInterrupt


def run(args) -> int:
    from distillkit.cli import console
    from distillkit.engine import Engine

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # preemption: checkpoint, then exit
    engine = Engine.from_recipe(args.recipe, args.overrides)
    engine.setup()  # missing weight files (validate's warnings) stop here, before any model loads
    if engine.global_step:
        console.print(f"resumed from step {engine.global_step}")
    engine.fit()
    if engine.is_main:
        console.print(f"[green]done[/]: {engine.output_dir}")
    engine.accelerator.end_training()
    return 0
