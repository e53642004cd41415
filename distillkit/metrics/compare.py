"""``distillkit compare``: several runs and the teacher's solver curve under one protocol, in one table.

Each run's evaluation is read from ``<run>/eval/<protocol>.json`` and made when missing (the same
defaults as ``distillkit eval``). The teacher reference is the teacher sampled by DDIM at 1, 2, 4, 8,
25 and 50 steps with the runs' guidance scale; in the toy world both the neural teacher's curve and
the exact teacher's are drawn. A toy teacher folder written by ``distillkit teach`` carries these
curves (``reference.json``); they are reused when their protocol matches, and otherwise computed once
and cached in the output folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from distillkit.errors import UsageError
from distillkit.metrics.evaluate import TOY_FAMILIES, EvalOptions, evaluate
from distillkit.metrics.runs import read_recipe, results_path, run_dir_of

TEACHER_STEPS = (1, 2, 4, 8, 25, 50)


@dataclass
class CompareOptions:
    eval: EvalOptions = field(default_factory=EvalOptions)
    out: str = "runs/compare"
    teacher_steps: Sequence[int] = TEACHER_STEPS
    teacher: bool = True
    reevaluate: bool = False


def _protocol_name(run: Path, options: CompareOptions) -> Optional[str]:
    """The protocol name a run's results are filed under, known without loading the model."""
    recipe = read_recipe(run_dir_of(run) or run)
    family = (recipe.get("model") or {}).get("family")
    if family in TOY_FAMILIES:
        from distillkit.toy.evaluate import protocol_name

        return protocol_name(options.eval.per_prompt)
    return options.eval.preset


def gather(runs: Sequence[str | Path], options: CompareOptions, note=print) -> list[dict]:
    records = []
    for run in runs:
        run = Path(run)
        if not run.exists():
            raise UsageError(f"{run} does not exist; give run folders (or checkpoints / final/ folders)")
        name = _protocol_name(run, options)
        path = results_path(run, name) if name else None
        if path is not None and path.is_file() and not options.reevaluate:
            records.append(json.loads(path.read_text(encoding="utf-8")))
            note(f"{run}: read {path}")
            continue
        note(f"{run}: evaluating ...")
        record, path = evaluate(run, options.eval)
        note(f"{run}: wrote {path}")
        records.append(record)
    kinds = {"toy" if r["family"] in TOY_FAMILIES else "sd" for r in records}
    names = {r["protocol"].get("name") for r in records}
    if len(kinds) > 1 or len(names) > 1:
        raise UsageError(f"these runs were evaluated under different protocols ({sorted(map(str, names))}); compare "
                         f"runs of one kind under one protocol")
    return records


def _guidance(records: Sequence[dict]) -> float:
    scales = {r.get("guidance_scale") for r in records} - {None}
    return float(next(iter(scales))) if len(scales) == 1 else 1.0


def toy_teacher_curves(records: Sequence[dict], options: CompareOptions, note=print) -> list[dict]:
    """Neural and exact teacher curves for the runs' toy model folder (read, cached or computed)."""
    from distillkit.toy.teacher_error import read_reference, reference_curve

    run_dir = run_dir_of(records[0]["source"])
    folder = (read_recipe(run_dir).get("model") or {}).get("pretrained") if run_dir else None
    if not folder:
        return []
    guidance = _guidance(records)
    wanted = {"per_prompt": options.eval.per_prompt, "seed": options.eval.seed, "guidance_scale": guidance}
    steps = list(options.teacher_steps)

    def fits(curve: dict) -> bool:
        p = curve.get("protocol", {})
        return all(p.get(k) == v for k, v in wanted.items()) and [c["steps"] for c in curve["curve"]] == steps

    shipped = read_reference(folder) or {}
    key = hashlib.sha256(json.dumps([str(Path(folder).resolve()), wanted, steps]).encode()).hexdigest()[:12]
    cache = Path(options.out) / f"teacher-reference-{key}.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    from distillkit.toy.folder import has_unet_weights

    kinds = ("neural", "exact") if has_unet_weights(folder) else ("exact",)  # a world folder has no neural teacher
    curves = {}
    for which in kinds:
        for source in (shipped, cached):
            if which in source and fits(source[which]):
                curves[which] = source[which]
                break
    missing = [w for w in kinds if w not in curves]
    if missing:
        from distillkit.toy.backbone import ToyExactBackbone  # holds both: the folder's UNet and the exact one

        note(f"teacher reference: sampling the {' and '.join(missing)} teacher at {steps} steps (cached in {cache})")
        backbone = ToyExactBackbone.from_pretrained(folder, device=options.eval.device)
        for which in missing:
            unet = backbone.unet if which == "neural" else backbone.exact
            curves[which] = reference_curve(backbone, unet, guidance, options.eval.per_prompt, options.eval.seed,
                                            steps)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**cached, **curves}, indent=2) + "\n", encoding="utf-8")
    labels = {"neural": "teacher (DDIM)", "exact": "exact teacher (DDIM)"}
    return [{**curves[w], "method": "DDIM, no training", "run": labels[w], "budget": {}} for w in kinds]


def teacher_curves(records: Sequence[dict], options: CompareOptions, note=print) -> list[dict]:
    if not options.teacher or not records:
        return []
    if records[0]["family"] in TOY_FAMILIES:
        return toy_teacher_curves(records, options, note)
    note("teacher reference curve: not computed for SD/SDXL runs by default (50-step sampling of the whole "
         "protocol); see docs/evaluation.md")
    return []
