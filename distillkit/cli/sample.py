"""``distillkit sample PATH --prompt ... --steps N``: a PNG grid from a trained student.

Every argument that can be checked without the model (``--out``, ``--device``) is checked before it
loads, so a typo costs no minute of SDXL loading; ``--steps`` and ``--resolution`` depend on the
model and are checked right after.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from distillkit.errors import ModelLoadError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {n}")
    return n


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate a PNG grid from a run, checkpoint or exported student")
    p.add_argument("checkpoint", help="run directory, checkpoints/step-* directory, or final/ folder")
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--steps", type=int, action="append", help="sampling steps (repeatable; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=_positive, default=None, help="default: the training resolution")
    p.add_argument("--out", default=None, help="PNG path (default: <checkpoint>/sample.png)")
    # No default computed here: asking torch for a GPU would import it for every --help.
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
    p.add_argument("--no-ema", action="store_true", help="use live weights, not the EMA, from a checkpoint")
    p.set_defaults(func=sample)


def check_out(out: Path) -> None:
    """A writable image file path, or a UsageError saying what to give instead."""
    if out.is_dir():
        raise UsageError(f"--out {out}: that is a folder; give a file path such as {out / 'sample.png'}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--out {out}: the file name must end in one of {', '.join(IMAGE_SUFFIXES)} "
                         f"(the format is taken from it), e.g. {out.with_suffix('.png')}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # folders that do not exist yet are created
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, so no folder can be created under it")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out}: no permission to write in {parent}; choose another folder")


def resolve_device(requested: str | None) -> str:
    """The device to sample on; refuses one this machine does not have instead of failing inside torch."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {requested!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {requested}: no CUDA GPU is visible to torch on this machine "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                             f"use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {requested}: this machine has {count} CUDA GPU(s), cuda:0 to "
                             f"cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {requested}: MPS (Apple GPU) is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {requested}: sampling runs on cpu, cuda or mps")
    return requested


def size_multiple(backbone) -> int | None:
    """The pixel multiple the model's resolution must be: VAE factor × 2^(UNet downsamplings)."""
    blocks = getattr(getattr(getattr(backbone, "teacher_unet", None), "config", None), "block_out_channels", None)
    if not blocks:
        return None
    return backbone.spatial_factor * 2 ** (len(blocks) - 1)


def check_resolution(resolution: int, multiple: int | None, family: str) -> None:
    """A resolution the model cannot produce is refused with the nearest ones it can (it used to shrink
    silently: 60 px gave 56 px images)."""
    if multiple is None or resolution % multiple == 0:
        return
    below, above = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
    nearest = f"{below} or {above}" if below else f"{above}"
    raise UsageError(f"--resolution {resolution}: this {family} model makes images whose side is a multiple of "
                     f"{multiple} px; use {nearest}")


def sample(args) -> int:
    import torch

    from distillkit.cli import output
    from distillkit.engine.outputs import save_grid, steps_label
    from distillkit.inference import load_student, sample_images

    src = Path(args.checkpoint)
    if not src.exists():
        raise ModelLoadError(f"{src} does not exist; give a run folder, one of its checkpoints/step-* folders "
                             f"or an exported final/ folder")
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "sample.png"
    if args.out:
        check_out(out)
    device = resolve_device(args.device)
    backbone, student, resolution = load_student(args.checkpoint, device=device, use_ema=not args.no_ema)
    if args.resolution:
        check_resolution(args.resolution, size_multiple(backbone), backbone.family)
    resolution = args.resolution or resolution
    n = len(student.timesteps)
    steps = args.steps or [n]
    bad = [k for k in steps if not 1 <= k <= n]
    if bad:  # known only once the student is loaded, so not an argparse check
        raise UsageError(f"--steps {', '.join(map(str, bad))}: this student has {n} timestep(s) "
                         f"{list(student.timesteps)}; give --steps between 1 and {n}")
    images = torch.cat([sample_images(backbone, student, args.prompt, k, args.seed, resolution, device)
                        for k in steps])
    save_grid(images, out, ncols=len(args.prompt), row_labels=[steps_label(k) for k in steps],
              col_labels=args.prompt)
    output.note(f"wrote {out} (rows: {steps} steps; columns: prompts)")
    return 0
