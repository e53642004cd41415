"""Tables, CSV, Markdown and the plot of ``distillkit eval`` / ``compare`` (rich only in the CLI's hands).

A comparison is a list of rows — one per (method, sampling steps), teacher rows included — with every
metric, the training budget and the wall time per sample; the protocol the metrics were measured under
is written above every table and into every file, so a number never travels without it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

from distillkit.metrics.runs import BUDGET_LABELS, ordered_budget

#: metric key -> (column label, higher is better)
METRIC_LABELS = {"fd": ("FD", False), "mode_tv": ("mode TV", False), "modes": ("modes", True),
                 "alignment": ("alignment", True), "precision": ("precision", True),
                 "fid": ("FID", False), "clip": ("CLIP", True)}
SHOWN_BUDGET = ("student_updates", "critic_updates", "images_seen", "wall_s")


def metric_keys(records: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for r in records:
        for res in r.get("results", []):
            keys += [k for k in res["metrics"] if k not in keys]
    known = [k for k in METRIC_LABELS if k in keys]
    return known + [k for k in keys if k not in known]


def header(key: str) -> str:
    label, higher = METRIC_LABELS.get(key, (key, None))
    return f"{label} {'↑' if higher else '↓'}" if higher is not None else label





def fmt(value, key: str = "") -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and key not in ("wall_s",):
        return f"{value:,}"
    if key in ("student_updates", "critic_updates", "images_seen", "unet_forward_samples", "backward_passes"):
        return f"{int(value):,}"
    if key == "wall_s":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
    if key == "seconds_per_sample":
        return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def protocol_line(protocol: dict) -> str:
    parts = [protocol.get("name", ""), f"reference: {protocol.get('reference', '?')}",
             f"count {protocol.get('count', '?')}"]
    if "resolution" in protocol:
        resize = protocol.get("resize")
        parts.append(f"resolution {protocol['resolution']}" + (f", resize {resize}" if resize not in (None, "none")
                                                               else ", no resize"))
    for key in ("features", "clip", "precision", "solver", "guidance_scale", "seed"):
        if protocol.get(key) is not None:
            parts.append(f"{key}: {protocol[key]}")
    return "; ".join(str(p) for p in parts if p)


def rows_of(record: dict, label: Optional[str] = None) -> list[dict]:
    """One row per step count of an evaluation record (a run's, or a teacher curve's)."""
    budget = dict(ordered_budget(record.get("budget", {})))
    out = []
    for res in record.get("results", record.get("curve", [])):
        row = {"method": label or record.get("run") or record.get("method", "?"), "run": record.get("run", ""),
               "losses": record.get("method", ""), "steps": res["steps"],
               **res["metrics"], "seconds_per_sample": res.get("seconds_per_sample")}
        row.update({k: budget.get(k) for k in SHOWN_BUDGET})
        out.append(row)
    return out


def columns(rows: Sequence[dict], metrics: Sequence[str], budget: bool = True) -> list[tuple[str, str]]:
    """(key, header) of the table's columns; budget columns only when asked and some row has them."""
    cols = [("method", "method"), ("steps", "steps")] + [(m, header(m)) for m in metrics]
    if budget and any(r.get("losses") for r in rows):
        cols.insert(1, ("losses", "losses"))
    cols.append(("seconds_per_sample", "time/sample"))
    if budget:
        cols += [(k, BUDGET_LABELS[k]) for k in SHOWN_BUDGET if any(r.get(k) is not None for r in rows)]
    return cols


def floor_row(floor: Optional[dict], metrics: Sequence[str]) -> Optional[dict]:
    if not floor:
        return None
    return {"method": "noise floor (exact samples)", "run": "", "steps": "", **{m: floor.get(m) for m in metrics}}


def rich_table(rows: Sequence[dict], metrics: Sequence[str], title: str, caption: str, floor: Optional[dict] = None):
    """Metrics by method and step count (the budget is :func:`budget_table`'s, to fit a terminal)."""
    from rich.table import Table

    from distillkit.cli.output import text

    cols = columns(rows, metrics, budget=False)
    table = Table(title=text(title), caption=text(caption), caption_justify="left")
    for key, head in cols:
        table.add_column(head, justify="left" if key == "method" else "right", no_wrap=key != "method")
    best = _best(rows, metrics)
    for row in rows:
        table.add_row(*[text(fmt(row.get(k), k), "bold green" if (k, row.get(k)) in best else "") for k, _ in cols])
    extra = floor_row(floor, metrics)
    if extra:
        table.add_row(*[text(fmt(extra.get(k), k), "dim") for k, _ in cols])
    return table


def budget_table(records: Sequence[dict]):
    """Each run's losses and training budget (what it cost to get its numbers)."""
    from rich.table import Table

    from distillkit.cli.output import text

    keys = [k for k in BUDGET_LABELS if any(k in r.get("budget", {}) for r in records)]
    table = Table(title=text("training budget"))
    table.add_column("run")
    table.add_column("losses")
    for k in keys:
        table.add_column(BUDGET_LABELS[k], justify="right")
    for r in records:
        table.add_row(text(r.get("run", "")), text(r.get("method", "")),
                      *[text(fmt(r.get("budget", {}).get(k), k)) for k in keys])
    return table


def _best(rows: Sequence[dict], metrics: Sequence[str]) -> set:
    best = set()
    for m in metrics:
        values = [r[m] for r in rows if isinstance(r.get(m), (int, float))]
        higher = METRIC_LABELS.get(m, (m, False))[1]
        if values:
            best.add((m, max(values) if higher else min(values)))
    return best


def to_csv(rows: Sequence[dict], metrics: Sequence[str], protocol: dict, floor: Optional[dict] = None) -> str:
    cols = columns(rows, metrics)
    buf = io.StringIO()
    buf.write(f"# protocol: {protocol_line(protocol)}\n")
    writer = csv.writer(buf)
    writer.writerow([k for k, _ in cols])
    extra = floor_row(floor, metrics)
    for row in list(rows) + ([extra] if extra else []):
        writer.writerow(["" if row.get(k) is None else row.get(k) for k, _ in cols])
    return buf.getvalue()


def to_markdown(rows: Sequence[dict], metrics: Sequence[str], protocol: dict, floor: Optional[dict] = None) -> str:
    cols = columns(rows, metrics)
    lines = [f"Protocol: {protocol_line(protocol)}", "", "| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---" if k in ("method", "losses") else "---:" for k, _ in cols) + "|"]
    extra = floor_row(floor, metrics)
    for row in list(rows) + ([extra] if extra else []):
        lines.append("| " + " | ".join(fmt(row.get(k), k) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(series: dict[str, list[tuple[int, float]]], metric: str, path: Path, protocol: dict,
         floor: Optional[float] = None, reference: Sequence[str] = ()) -> Path:
    """``metric`` against sampling steps, one line per method; ``reference`` names are drawn as lines
    without markers (the teacher's solver curves); the noise floor as a dashed line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for name, points in series.items():
        points = sorted(points)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if name in reference:
            ax.plot(xs, ys, "-", color="0.35" if "exact" not in name else "0.65", lw=1.6, label=name, zorder=1)
        else:
            ax.plot(xs, ys, "o-", ms=7, lw=1.4, label=name, zorder=3)
    if floor is not None:
        ax.axhline(floor, ls="--", color="tab:red", lw=1, label="noise floor (exact samples)")
    ax.set_xscale("log")
    all_x = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(all_x)
    ax.set_xticklabels([str(x) for x in all_x])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the measured step counts labelled
    ax.set_xlabel("sampling steps")
    label, higher = METRIC_LABELS.get(metric, (metric, False))
    if not higher and all(p[1] > 0 for pts in series.values() for p in pts):
        ax.set_yscale("log")
    ax.set_ylabel(f"{label} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(f"{label} vs sampling steps — {protocol.get('name', '')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    import textwrap

    footer = textwrap.wrap(protocol_line(protocol), 150)  # the whole protocol: a number without it is ambiguous
    fig.text(0.01, 0.005, "\n".join(footer), fontsize=6, color="0.4", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.018 * len(footer), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
