"""``distillkit sample PATH --prompt ... --steps N``: a PNG grid from a trained student."""

from __future__ import annotations

from pathlib import Path

from distillkit.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate a PNG grid from a run, checkpoint or exported student")
    p.add_argument("checkpoint", help="run directory, checkpoints/step-* directory, or final/ folder")
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--steps", type=int, action="append", help="sampling steps (repeatable; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="default: the training resolution")
    p.add_argument("--out", default=None, help="PNG path (default: <checkpoint>/sample.png)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--no-ema", action="store_true", help="use live weights, not the EMA, from a checkpoint")
    p.set_defaults(func=sample)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sample(args) -> int:
    import torch

    from distillkit.cli import console
    from distillkit.engine.outputs import save_grid, steps_label
    from distillkit.inference import load_student, sample_images

    backbone, student, resolution = load_student(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    resolution = args.resolution or resolution
    n = len(student.timesteps)
    steps = args.steps or [n]
    bad = [k for k in steps if not 1 <= k <= n]
    if bad:  # known only once the student is loaded, so not an argparse check
        raise UsageError(f"--steps {', '.join(map(str, bad))}: this student has {n} timestep(s) "
                         f"{list(student.timesteps)}; give --steps between 1 and {n}")
    images = torch.cat([sample_images(backbone, student, args.prompt, k, args.seed, resolution, args.device)
                        for k in steps])
    src = Path(args.checkpoint)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "sample.png"
    save_grid(images, out, ncols=len(args.prompt), row_labels=[steps_label(k) for k in steps],
              col_labels=args.prompt)
    console.print(f"wrote {out} (rows: {steps} steps; columns: prompts)")
    return 0
