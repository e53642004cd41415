"""``distillkit run RECIPE``: train, checkpointing and sampling as the recipe says."""

from __future__ import annotations

import logging
import signal
import sys

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

    The handler runs between any two bytecodes, possibly halfway through an import, so it imports
    nothing and writes plain text: it used to import the rich console to colour its line, which can fail
    on a half-initialised module; the ImportError then met the ``except ImportError`` around the import
    it had interrupted (``quiet_library_progress``), and the stop was lost (caught in CI: the run went on
    to its data check).
    """

    def __init__(self):
        self.engine = None
        self.requested: str | None = None  # the signal's name, once one came
        self.announced = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self.engine is None:
            raise StopBeforeTraining  # run() says so, outside the handler
        set_up = getattr(self.engine, "_is_setup", False)
        what = "stopping after this step with a checkpoint" if set_up else "stopping before training starts"
        sys.stderr.write(f"{self.requested}: {what} (send it again to abort now)\n")
        sys.stderr.flush()
        self.announced = True
        self.engine.request_stop()

    def attach(self, engine) -> None:
        self.engine = engine


def _stopped_early(output, stop: GracefulStop) -> int:
    if not stop.announced:
        output.note(f"{stop.requested}: stopping before training starts", "yellow")
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
        except StopBeforeTraining:
            return _stopped_early(output, stop)
        if stop.requested:  # the handler's exception was swallowed by a library's bare `except:`
            return _stopped_early(output, stop)
        stop.attach(engine)
        engine.setup()  # missing weight files (validate's warnings) stop here, before any model loads
        if stop.requested:  # a signal during set-up: the run folder is consistent, no step was taken
            return _stopped_early(output, stop)
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
