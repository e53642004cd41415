"""One evaluation of one student, whatever its family: what ``distillkit eval`` runs and ``compare`` reads.

The student is loaded the way ``distillkit sample`` loads it (a run folder, a checkpoint or an export);
toy families get the exact toy metrics, every other family FID and CLIP score under a protocol. The
result is one JSON file (:func:`distillkit.metrics.runs.results_path`) holding the protocol, the noise
floor where one exists, the run's training budget, and per step count the metrics, the wall time per
sample and (toy) a sample grid.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from distillkit.metrics.runs import method_label, read_budget, read_recipe, results_path, run_dir_of

TOY_FAMILIES = ("toy", "toy_exact")


@dataclass
class EvalOptions:
    steps: Optional[list[int]] = None  # default: 1 and the student's N
    seed: int = 0
    device: str = "cpu"
    use_ema: bool = True
    # toy world
    per_prompt: int = 256
    # SD / SDXL
    preset: Optional[str] = None
    captions: Optional[str] = None
    reference: Optional[str] = None
    inception_weights: Optional[str] = None
    clip_weights: Optional[str] = None
    clip_model: Optional[str] = None
    count: Optional[int] = None
    resolution: Optional[int] = None
    resize: Optional[int] = None
    batch_size: int = 16
    stats_cache: str = "runs/fid_stats"
    extra: dict = field(default_factory=dict)


def default_steps(student) -> list[int]:
    return sorted({1, len(student.timesteps)})


def _check_steps(steps: Sequence[int], student) -> list[int]:
    from distillkit.errors import UsageError

    n = len(student.timesteps)
    bad = [k for k in steps if not 1 <= k <= n]
    if bad:
        raise UsageError(f"--steps {bad}: this student has {n} timestep(s) {list(student.timesteps)}; give --steps "
                         f"between 1 and {n}")
    return list(steps)


def evaluate(target: str | Path, options: EvalOptions) -> tuple[dict, Path]:
    """Evaluate the student at ``target``; returns (the record, the JSON path it was written to)."""
    from distillkit.inference import load_student

    target = Path(target)
    backbone, student, resolution = load_student(target, device=options.device, use_ema=options.use_ema)
    steps = _check_steps(options.steps or default_steps(student), student)
    if backbone.family in TOY_FAMILIES:
        from distillkit.toy.evaluate import evaluate_toy, protocol_name

        name = protocol_name(options.per_prompt)
        out = results_path(target, name)
        record = evaluate_toy(backbone, student, steps, options.per_prompt, options.seed,
                              grid_prefix=out.with_suffix(""))
    else:
        record, name = _evaluate_sd(backbone, student, steps, resolution, options)
        out = results_path(target, name)
    run_dir = run_dir_of(target)
    recipe = read_recipe(run_dir) if run_dir else {}
    record = {"source": str(target), "run": (recipe.get("run") or {}).get("name") or target.name,
              "method": method_label(recipe) if recipe else "?", "family": backbone.family,
              "student_timesteps": list(student.timesteps),
              "guidance_scale": (recipe.get("teacher") or {}).get("guidance_scale"),
              "budget": read_budget(run_dir) if run_dir else {},
              "device": f"{options.device} ({platform.processor() or platform.machine()})", **record}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record, out


def _evaluate_sd(backbone, student, steps, resolution, options: EvalOptions) -> tuple[dict, str]:
    from distillkit.errors import UsageError
    from distillkit.metrics.protocol import Protocol, preset
    from distillkit.metrics.sd_eval import evaluate_sd, read_captions

    if options.preset:
        protocol = preset(options.preset)
    else:
        protocol = Protocol(name="custom", reference=str(options.reference), count=options.count or 1000,
                            resolution=options.resolution or resolution)
    protocol = protocol.with_(count=options.count, resolution=options.resolution, resize=options.resize,
                              clip_model=options.clip_model)
    if options.preset and any(v is not None for v in (options.count, options.resolution, options.resize,
                                                      options.clip_model)):
        protocol = protocol.with_(name=f"{protocol.name}-modified")  # numbers no longer match the preset's
    missing = [flag for flag, v in (("--captions", options.captions), ("--reference", options.reference),
                                    ("--inception-weights", options.inception_weights)) if v is None]
    if missing:
        raise UsageError(f"an FID/CLIP evaluation of a {backbone.family} student needs {', '.join(missing)} (local "
                         f"files: nothing is downloaded); see docs/evaluation.md")
    captions = read_captions(options.captions, protocol.count, options.seed)
    record = evaluate_sd(backbone, student, protocol, steps, captions=captions, reference=options.reference,
                         inception_weights=options.inception_weights, clip_weights=options.clip_weights,
                         cache_dir=Path(options.stats_cache), seed=options.seed, batch_size=options.batch_size,
                         device=options.device, allow_random_clip=bool(options.extra.get("allow_random_clip")))
    return record, protocol.name
