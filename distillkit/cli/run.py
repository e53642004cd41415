"""``distillkit run RECIPE``: train, checkpointing and sampling as the recipe says."""

from __future__ import annotations

import signal

from distillkit.cli.common import add_recipe_args


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train a student from a recipe")
    add_recipe_args(p)
    p.set_defaults(func=run)


def _graceful(engine, console):
    """First SIGTERM/SIGINT: finish the step, checkpoint, exit 130. A second one aborts at once."""
    def handler(signum, frame):
        if engine.stop_requested:
            raise KeyboardInterrupt
        engine.request_stop()
        console.print(f"[yellow]{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                      f"(send it again to abort now)[/]")
    return handler


def run(args) -> int:
    from distillkit.cli import console
    from distillkit.engine import Engine

    engine = Engine.from_recipe(args.recipe, args.overrides)
    signals = (signal.SIGTERM, signal.SIGINT)  # preemption / Ctrl-C: checkpoint a whole step, then exit
    previous = {sig: signal.signal(sig, _graceful(engine, console)) for sig in signals}
    try:
        engine.setup()  # missing weight files (validate's warnings) stop here, before any model loads
        if engine.global_step:
            console.print(f"resumed from step {engine.global_step}")
        status = engine.fit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    engine.accelerator.end_training()
    if status == "interrupted":
        console.print(f"[yellow]interrupted[/] at step {engine.global_step}; run the same command to resume")
        return 130
    if engine.is_main:
        console.print(f"[green]done[/]: {engine.output_dir}")
    return 0
