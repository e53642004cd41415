"""``distillkit compare RUN...``: runs side by side with the teacher's solver curve, as a table, CSV,
Markdown and a plot of the metric against sampling steps.

Runs without an evaluation under the protocol are evaluated first (as ``distillkit eval`` would).
Writes ``compare.csv``, ``compare.md`` and ``compare.png`` (``compare-<metric>.png`` for other metrics)
to ``--out``.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare trained students (and the teacher's solver curve) in one table and plot")
    p.add_argument("runs", nargs="+", help="run folders (or checkpoints / final/ folders)")
    p.add_argument("--out", default="runs/compare", help="folder for compare.csv, compare.md, compare.png")
    p.add_argument("--metric", action="append", help="metric(s) to plot (default: fd in the toy world, fid otherwise)")
    p.add_argument("--no-teacher", action="store_true", help="leave out the teacher's solver curve")
    p.add_argument("--teacher-steps", type=int, nargs="+", default=None, help="default: 1 2 4 8 25 50")
    p.add_argument("--reevaluate", action="store_true", help="evaluate again even when results exist")
    p.add_argument("--steps", type=int, action="append", help="student sampling steps (default 1 and all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--per-prompt", type=int, default=256, help="toy world: samples per prompt")
    p.add_argument("--preset", help="SD/SDXL: the protocol the runs were (or are to be) evaluated under")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from pathlib import Path

    from distillkit.cli import output
    from distillkit.cli.sample import resolve_device
    from distillkit.metrics import report
    from distillkit.metrics.compare import TEACHER_STEPS, CompareOptions, gather, teacher_curves
    from distillkit.metrics.evaluate import EvalOptions

    options = CompareOptions(
        eval=EvalOptions(steps=args.steps, seed=args.seed, device=resolve_device(args.device),
                         per_prompt=args.per_prompt, preset=args.preset),
        out=args.out, teacher_steps=args.teacher_steps or TEACHER_STEPS, teacher=not args.no_teacher,
        reevaluate=args.reevaluate)
    records = gather(args.runs, options, note=output.note)
    teachers = teacher_curves(records, options, note=output.note)
    protocol = records[0]["protocol"]
    floor = records[0].get("noise_floor")
    metrics = report.metric_keys(records)
    rows = [row for t in teachers for row in report.rows_of(t)]
    rows += [row for r in records for row in report.rows_of(r)]
    caption = "protocol: " + report.protocol_line(protocol)
    console = output.out_console()
    console.print(report.rich_table(rows, metrics, "distillkit compare", caption, floor))
    console.print(report.budget_table(records))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(report.to_csv(rows, metrics, protocol, floor), encoding="utf-8")
    (out / "compare.md").write_text(report.to_markdown(rows, metrics, protocol, floor), encoding="utf-8")
    plotted = args.metric or [m for m in ("fd", "fid") if m in metrics][:1] or metrics[:1]
    for i, metric in enumerate(plotted):
        series: dict[str, list] = {}
        for row in rows:
            if isinstance(row.get(metric), (int, float)):
                series.setdefault(row["method"], []).append((row["steps"], row[metric]))
        name = "compare.png" if i == 0 else f"compare-{metric}.png"
        report.plot(series, metric, out / name, protocol, floor.get(metric) if floor else None,
                    reference=[t["run"] for t in teachers])
    output.note(f"wrote {out / 'compare.csv'}, {out / 'compare.md'} and the plot(s) in {out}")
    return 0
