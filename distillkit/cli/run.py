"""``distillkit run RECIPE``: train, checkpointing and sampling as the recipe says."""

from __future__ import annotations

import logging
import signal

from distillkit.cli.common import add_recipe_args

#: preemption (SIGTERM) and Ctrl-C (SIGINT): checkpoint a whole step, then exit 130
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train a student from a recipe")
    add_recipe_args(p)
    p.add_argument("--allow-changes", action="store_true",
                   help="resume a run folder although its recipe differs in settings that shape the weights "
                        "(run.seed, a loss, ...); each change is listed first and recorded in run.json")
    p.set_defaults(func=run, setup_libraries=False)  # done in run(), once the signal handlers are in place


class StopBeforeTraining(BaseException):
    """Raised by the handler while nothing has been written yet (imports, recipe): leave at once.
    A BaseException, so that no library's ``except Exception`` swallows it."""


class GracefulStop:
    """The signal handler of ``run``, installed before anything slow (imports, recipe, models).

    First SIGTERM/SIGINT: while the recipe is still being read, stop at once (nothing is written
    before the engine sets up); during set-up, stop when it is done; during training, finish the
    step, checkpoint and exit 130. A second one aborts at once. Without it, a SIGTERM in the seconds
    spent importing torch killed the process with status 143 and no word.
    """

    def __init__(self):
        self.engine = None
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        from distillkit.cli import output

        name = signal.Signals(signum).name
        if self.engine is None or not getattr(self.engine, "_is_setup", False):
            output.note(f"{name}: stopping before training starts (send it again to abort now)", "yellow")
        else:
            output.note(f"{name}: stopping after this step with a checkpoint (send it again to abort now)",
                        "yellow")
        if self.engine is None:
            raise StopBeforeTraining
        self.engine.request_stop()

    def attach(self, engine) -> None:
        self.engine = engine


def _stopped_early(output) -> int:
    output.note("interrupted before the first training step; nothing was trained. Run the same command "
                "to start again", "yellow")
    return 130


class EngineWarnings(logging.Handler):
    """The engine's log warnings (a resume fallback, skipped images, a taken-over lock) as CLI warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        from distillkit.cli import output

        output.warning(record.getMessage())


def run(args) -> int:
    stop = GracefulStop()
    previous = {sig: signal.signal(sig, stop) for sig in SIGNALS}
    from distillkit.cli import output

    warnings = EngineWarnings()
    logging.getLogger("distillkit").addHandler(warnings)
    try:
        try:
            from distillkit.cli import quiet_library_progress

            quiet_library_progress()
            from distillkit.engine import Engine

            engine = Engine.from_recipe(args.recipe, args.overrides, allow_changes=args.allow_changes)
            stop.attach(engine)
        except StopBeforeTraining:
            return _stopped_early(output)
        engine.setup()  # missing weight files (validate's warnings) stop here, before any model loads
        if stop.requested:  # a signal during set-up: the run folder is consistent, no step was taken
            return _stopped_early(output)
        if engine.global_step:
            output.note(f"resumed from step {engine.global_step}")
        status = engine.fit()
    finally:
        logging.getLogger("distillkit").removeHandler(warnings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    engine.accelerator.end_training()
    if status == "interrupted":
        output.err_console().print(f"[yellow]interrupted[/] at step {engine.global_step}; run the same command "
                                   f"to resume")
        return 130
    if engine.is_main:
        output.err_console().print(f"[green]done[/]: {output.esc(engine.output_dir)}", soft_wrap=True)
    return 0
