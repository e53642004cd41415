"""The exported student (a run's ``final/`` folder), defined once: written by the engine, read by ``load_student``.

A full student is written as the family's complete diffusers folder (``StableDiffusionPipeline``/
``StableDiffusionXLPipeline.from_pretrained(final)``), a LoRA student as ``pytorch_lora_weights.safetensors``
(``pipe.load_lora_weights(final)`` on the base) plus ``scheduler/``. Either way the scheduler is the one
that samples the student exactly as it was trained and as ``distillkit sample`` does
(:mod:`distillkit.schedulers`), so ``pipe(prompt, num_inference_steps=k, guidance_scale=...)`` at k = 1 or
the student's step count gives the same images from the same seed. ``distillkit.json`` records what a
reader needs to rebuild the student without the recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from distillkit.errors import ModelLoadError

META = "distillkit.json"
#: what diffusers' ``save_lora_weights`` writes; offline, ``load_lora_weights`` needs the name spelt out
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class ExportMeta:
    family: str
    timesteps: list[int]
    first_input: str = "noise"
    renoise: str = "fresh"
    lora: bool = False
    adapter: Optional[str] = None  # the LoRA adapter's name in a checkpoint (not in the exported file)
    base: Optional[str] = None  # the teacher's source, which a LoRA export is applied to
    step: int = 0
    resolution: int = 512
    scheduler: str = ""  # class of the exported scheduler
    notes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: str | Path) -> "ExportMeta":
        path = Path(folder) / META
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{folder} is not an exported student: it has no {META}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path} is damaged ({exc}); re-export the student from its run "
                                  f"(distillkit sample / Engine.save_final)") from None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        missing = [k for k in ("family", "timesteps") if k not in known]
        if missing:
            raise ModelLoadError(f"{path} lacks {missing}; re-export the student from its run")
        return cls(**known)

    def write(self, folder: str | Path) -> None:
        (Path(folder) / META).write_text(json.dumps(asdict(self), indent=2))


def student_scheduler(backbone, student):
    """The diffusers scheduler that samples ``student`` as it was trained (see :mod:`distillkit.schedulers`)."""
    import torch

    from distillkit.schedulers import scheduler_for

    scale = 1.0
    if student.first_input == "sigma_noise":
        scale = float(backbone.schedule.sigma(torch.tensor(student.timesteps[0])))
    return scheduler_for(dict(backbone.scheduler.config), student.timesteps, scale, student.renoise)


def write_final(backbone, student, out: str | Path, *, base: Optional[str], step: int, resolution: int) -> Path:
    """Write ``student`` (its weights as they are now: swap an EMA in first) to ``out``."""
    out = Path(out)
    scheduler = student_scheduler(backbone, student)
    if student.is_lora:
        backbone.save_lora(student.unet, str(out))
        scheduler.save_pretrained(str(out / "scheduler"))
    else:
        backbone.save_pipeline(student.unet, str(out), scheduler)
    notes = []
    if type(scheduler).__name__ == "StudentScheduler":
        notes.append("the scheduler is distillkit.schedulers.StudentScheduler: `import distillkit.schedulers` "
                     "before from_pretrained")
    ExportMeta(backbone.family, list(student.timesteps), student.first_input, student.renoise, student.is_lora,
               student.adapter, base, step, resolution, type(scheduler).__name__, notes).write(out)
    return out
