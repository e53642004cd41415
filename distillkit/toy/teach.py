"""Turn the ``final/`` folder of a ``core.denoising`` run into a toy teacher folder, with its report card.

The run's export is already a toy folder (world, UNet, schedule); the teacher folder is the same with
the neural family recorded, plus ``reference.json``: the UNet's x0 error against the exact teacher per
timestep and the DDIM sampling curves of the neural and the exact teacher (see
:mod:`distillkit.toy.teacher_error`).
"""

from __future__ import annotations

from pathlib import Path

from distillkit.toy.folder import read_scheduler, read_unet, read_world, write_toy_folder
from distillkit.toy.teacher_error import REFERENCE_STEPS, denoiser_error, reference_curve, write_reference


def export_teacher(final: str | Path, out: str | Path, per_prompt: int = 256, device: str = "cpu",
                   guidance_scale: float = 1.0, steps=None) -> dict:
    """Write the teacher folder ``out`` from a run's ``final`` export; returns what ``reference.json`` holds."""
    from distillkit.toy.backbone import ToyBackbone

    final, out = Path(final), Path(out)
    write_toy_folder(out, read_world(final), read_unet(final), read_scheduler(final), family="toy")
    backbone = ToyBackbone.from_pretrained(out, device=device)
    steps = tuple(steps or REFERENCE_STEPS)
    report = {"denoiser_error": denoiser_error(backbone, backbone.unet),
              "neural": reference_curve(backbone, backbone.unet, guidance_scale, per_prompt, steps=steps),
              "exact": reference_curve(backbone, backbone.exact, guidance_scale, per_prompt, steps=steps)}
    write_reference(out, report)
    return report
