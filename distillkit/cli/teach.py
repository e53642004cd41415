"""``distillkit teach RECIPE``: train a toy world's neural teacher by denoising score matching.

The recipe is an ordinary one whose loss is ``core.denoising`` (its "student" is the network being
trained), so checkpoints, resume and progress are the engine's. When training ends, the trained UNet
(its EMA, if the recipe keeps one) is written as a toy model folder (``--out``, default
``<run>/teacher``) together with its error against the exact teacher and its DDIM sampling curve
(``reference.json``, which ``distillkit compare`` draws as the teacher's reference).
"""

from __future__ import annotations

from distillkit.cli.common import add_recipe_args


def add_parser(sub) -> None:
    p = sub.add_parser("teach", help="train a toy-world teacher by denoising score matching (core.denoising)")
    add_recipe_args(p)
    p.add_argument("--out", default=None, help="the teacher's model folder (default: <run>/teacher)")
    p.add_argument("--per-prompt", type=int, default=256, help="samples per prompt of the reference curve")
    p.add_argument("--reference-steps", type=int, nargs="+", default=None,
                   help="DDIM step counts of the reference curve (default: 1 2 4 8 25 50)")
    p.set_defaults(func=teach, setup_libraries=False)


def teach(args) -> int:
    from pathlib import Path

    from distillkit.cli import output
    from distillkit.cli.run import run
    from distillkit.errors import UsageError
    from distillkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides).recipe
    losses = [entry.name for entry in recipe.losses if entry.enabled]
    if losses != ["core.denoising"]:
        raise UsageError(f"{args.recipe}: distillkit teach trains with core.denoising alone; this recipe's losses are "
                         f"{losses} (use distillkit run for distillation)")
    if recipe.model.family not in ("toy", "toy_exact"):
        raise UsageError(f"{args.recipe}: model.family is {recipe.model.family!r}; distillkit teach trains toy-world "
                         f"teachers (family 'toy_exact' on a world folder, e.g. distillkit/toy/assets/world)")
    status = run(_run_args(args))
    if status != 0:
        return status
    run_dir = recipe.output_path()
    out = Path(args.out) if args.out else run_dir / "teacher"
    from distillkit.toy.teach import export_teacher

    report = export_teacher(run_dir / "final", out, per_prompt=args.per_prompt, device=recipe.train.device or "cpu",
                            steps=args.reference_steps)
    _print_report(report, output)
    output.note(f"wrote the teacher to {out} (use it as model.pretrained with model.family = \"toy\")")
    return 0


def _run_args(args):
    """The arguments ``distillkit run`` would parse for this recipe (its own parser, so its defaults follow it)."""
    import argparse

    from distillkit.cli import run as run_verb

    parser = argparse.ArgumentParser()
    run_verb.add_parser(parser.add_subparsers())
    sets = [item for o in args.overrides for item in ("--set", o)]
    return parser.parse_args(["run", args.recipe, *sets])


def _print_report(report: dict, output) -> None:
    from rich.table import Table

    from distillkit.metrics import report as fmt

    err = report["denoiser_error"]
    table = Table(title="teacher x0 error against the exact teacher (MSE per pixel)")
    for head in ("t", "conditional", "unconditional", "exact teacher vs data"):
        table.add_column(head, justify="right")
    for i, t in enumerate(err["t"]):
        table.add_row(str(t), f"{err['x0_mse'][i]:.2e}", f"{err['x0_mse_uncond'][i]:.2e}",
                      f"{err['exact_x0_mse_to_data'][i]:.2e}")
    output.out_console().print(table)
    curves = [{**report[w], "method": label, "run": ""} for w, label in (("neural", "teacher (DDIM)"),
                                                                        ("exact", "exact teacher (DDIM)"))]
    rows = [row for c in curves for row in fmt.rows_of(c)]
    metrics = fmt.metric_keys([{"results": c["curve"]} for c in curves])
    output.out_console().print(fmt.rich_table(rows, metrics, "teacher sampling curves",
                                              "protocol: " + fmt.protocol_line(report["neural"]["protocol"]),
                                              report["neural"]["noise_floor"]))
