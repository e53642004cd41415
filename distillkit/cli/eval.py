"""``distillkit eval PATH``: exact toy metrics, or FID and CLIP score, of a trained student, with their protocol.

PATH is a run folder, a ``checkpoints/step-*`` folder or an exported ``final/``. In the toy world the
metrics are exact and printed beside their noise floor; for SD/SDXL students, FID (Inception from a
local file) and CLIP score (OpenCLIP from a local file) under a named protocol (``--preset``). The
result is saved as ``<PATH>/eval/<protocol>.json`` (``compare`` reads it).
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a trained student (toy: exact metrics; SD/SDXL: FID and CLIP score)")
    p.add_argument("path", help="run directory, checkpoints/step-* directory, or final/ folder")
    p.add_argument("--steps", type=int, action="append", help="sampling steps (repeatable; default 1 and all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--no-ema", action="store_true", help="use live weights, not the EMA, from a checkpoint")
    toy = p.add_argument_group("toy world")
    toy.add_argument("--per-prompt", type=int, default=256, help="samples per prompt (default 256)")
    sd = p.add_argument_group("SD / SDXL (local files only; see docs/evaluation.md)")
    sd.add_argument("--preset", help="named protocol: add-coco2017-5k, gigagan-coco2014-30k-256")
    sd.add_argument("--captions", help="captions: a text file (one per line) or a COCO captions_*.json")
    sd.add_argument("--reference", help="reference images folder, or statistics (.safetensors) from an earlier eval")
    sd.add_argument("--inception-weights", help="torch-fidelity's Inception weights (.pth or .safetensors)")
    sd.add_argument("--clip-weights", help="OpenCLIP checkpoint of --clip-model")
    sd.add_argument("--clip-model", help="OpenCLIP architecture (default: the protocol's, ViT-g-14)")
    sd.add_argument("--count", type=int, help="number of images (default: the protocol's)")
    sd.add_argument("--resolution", type=int, help="generation resolution (default: the protocol's)")
    sd.add_argument("--resize", type=int, help="resize generated and reference images to this side first")
    sd.add_argument("--batch-size", type=int, default=16)
    sd.add_argument("--stats-cache", default="runs/fid_stats", help="folder for reference statistics")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from distillkit.cli import output
    from distillkit.cli.sample import resolve_device
    from distillkit.metrics.evaluate import EvalOptions, evaluate
    from distillkit.metrics.report import budget_table, metric_keys, protocol_line, rich_table, rows_of

    options = EvalOptions(steps=args.steps, seed=args.seed, device=resolve_device(args.device),
                          use_ema=not args.no_ema, per_prompt=args.per_prompt, preset=args.preset,
                          captions=args.captions, reference=args.reference, inception_weights=args.inception_weights,
                          clip_weights=args.clip_weights, clip_model=args.clip_model, count=args.count,
                          resolution=args.resolution, resize=args.resize, batch_size=args.batch_size,
                          stats_cache=args.stats_cache)
    record, path = evaluate(args.path, options)
    metrics = metric_keys([record])
    console = output.out_console()
    console.print(rich_table(rows_of(record), metrics, f"{record['run']}: {record['method']}",
                             "protocol: " + protocol_line(record["protocol"]), record.get("noise_floor")))
    if record.get("budget"):
        console.print(budget_table([record]))
    output.note(f"wrote {path}")
    return 0
