"""Few-step sampling from a trained student, wherever it was saved.

``load_student`` accepts the three things a run leaves behind — the exported ``final/`` folder (full
pipeline or LoRA), a checkpoint directory, or the run directory itself — so ``distillkit sample`` and
library users need not know which one they hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distillkit.errors import DistillkitError
from distillkit.models.loading import resolve_dtype
from distillkit.roles.student import Student


@torch.no_grad()
def sample_images(backbone, student: Student, prompts: list[str], steps: int, seed: int, resolution: int,
                  device=None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1]; the same seed gives the same noise for any ``steps``."""
    device = device or next(student.unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(backbone.sample_shape(len(prompts), resolution), generator=g).to(device)
    cond = backbone.encode_prompts(prompts, resolution)
    was_training = student.unet.training
    student.unet.eval()
    try:
        x0 = student.sample(noise, cond, steps, generator=g)
    finally:
        student.unet.train(was_training)
    return ((backbone.decode(x0).float() + 1) / 2).clamp(0, 1)


def _registry():
    from distillkit.registry import Registry

    return Registry.discover()


def _from_final(path: Path, device, registry) -> tuple:
    meta = json.loads((path / "distillkit.json").read_text())
    cls = registry.backbone(meta["family"])
    if meta.get("lora"):
        backbone = cls.from_pretrained(meta["base"], device=device)
        backbone.teacher_unet.load_lora_adapter(str(path), prefix="unet")
    else:
        backbone = cls.from_pretrained(str(path), device=device)
    student = Student(backbone, backbone.teacher_unet, meta["timesteps"],
                      first_input=meta.get("first_input", "noise"), renoise=meta.get("renoise", "fresh"))
    return backbone, student, int(meta.get("resolution", 512))


def _from_checkpoint(path: Path, device, registry, use_ema: bool) -> tuple:
    from safetensors.torch import load_file

    from distillkit.engine.engine import _load_params
    from distillkit.recipe.load import load_recipe

    run_dir = path.parent.parent
    resolved = load_recipe(run_dir / "recipe.toml", registry=registry)
    r = resolved.recipe
    backbone = resolved.backbone_cls.from_pretrained(r.model.pretrained, dtype=resolve_dtype(r.model.dtype),
                                                     device=device)
    student = Student.from_teacher(backbone, backbone.teacher_unet, r.student.timesteps, init="teacher",
                                   lora=r.student.lora.model_dump() if r.student.lora else None,
                                   first_input=r.student.first_input, renoise=r.student.renoise)
    weights = path / ("ema.safetensors" if use_ema and (path / "ema.safetensors").exists() else "student.safetensors")
    _load_params(student.unet, load_file(str(weights)), "student")
    return backbone, student, r.data.resolution


def load_student(path: str | Path, device="cpu", use_ema: bool = True, registry=None) -> tuple:
    """(backbone, student, resolution) from a final folder, a checkpoint dir or a run dir."""
    from distillkit.engine.checkpoint import latest_checkpoint

    path = Path(path)
    registry = registry or _registry()
    if (path / "distillkit.json").exists():
        return _from_final(path, device, registry)
    if (path / "COMPLETE").exists():
        return _from_checkpoint(path, device, registry, use_ema)
    if (path / "recipe.toml").exists():
        if (path / "final" / "distillkit.json").exists():
            return _from_final(path / "final", device, registry)
        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is not None:
            return _from_checkpoint(ckpt, device, registry, use_ema)
    raise DistillkitError(f"{path} is not a distillkit run, checkpoint or exported student (expected "
                          f"distillkit.json, a COMPLETE checkpoint marker, or recipe.toml with checkpoints/)")
