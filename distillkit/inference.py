"""Few-step sampling from a trained student, wherever it was saved.

``load_student`` accepts the three things a run leaves behind — the exported ``final/`` folder (full
pipeline or LoRA), a checkpoint directory, or the run directory itself — so ``distillkit sample`` and
library users need not know which one they hold. Sampling needs the model family and nothing of the
training plugins: a checkpoint's recipe is read for its model and student sections only, so the student
of an ADD run samples even where the ADD plugin is not installed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distillkit.checkpoint import MARKER, list_checkpoints, student_weights, verify_checkpoint
from distillkit.errors import ModelLoadError
from distillkit.export import LORA_WEIGHTS, META, ExportMeta
from distillkit.models.loading import resolve_dtype
from distillkit.roles.student import ADAPTER, Student


@torch.no_grad()
def sample_images(backbone, student: Student, prompts: list[str], steps: int, seed: int, resolution: int,
                  device=None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1]; the same seed gives the same noise for any ``steps``."""
    device = device or next(student.unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(backbone.sample_shape(len(prompts), resolution), generator=g).to(device)
    cond = backbone.encode_prompts(prompts, resolution)
    module = student.unet.module
    was_training = module.training
    module.eval()
    try:
        x0 = student.sample(noise, cond, steps, generator=g)
    finally:
        module.train(was_training)
    return ((backbone.decode(x0).float() + 1) / 2).clamp(0, 1)


def _backbone_cls(family: str, registry):
    if registry is None:
        from distillkit.registry import Registry

        registry = Registry.discover()
    return registry.backbone(family)


def _from_final(path: Path, device, registry) -> tuple:
    meta = ExportMeta.read(path)
    cls = _backbone_cls(meta.family, registry)
    kwargs = dict(zero_terminal_snr=True, first_input=meta.first_input, renoise=meta.renoise)
    if meta.lora:
        if not meta.base:
            raise ModelLoadError(f"{path / META} names no base model for its LoRA; re-export it from its run")
        backbone = cls.from_pretrained(meta.base, device=device)
        backbone.base_unet.load_lora_adapter(str(path), prefix="unet", adapter_name=ADAPTER,
                                             weight_name=LORA_WEIGHTS)
        from distillkit.models.adapters import UNetRef

        student = Student(backbone, UNetRef(backbone.base_unet, ADAPTER), meta.timesteps, **kwargs)
    else:
        backbone = cls.from_pretrained(str(path), device=device)
        # base_unet: the exported UNet, also for a family whose teacher is not that network (toy_exact)
        student = Student(backbone, backbone.base_unet, meta.timesteps, **kwargs)
    return backbone, student, int(meta.resolution)


def _from_checkpoint(path: Path, device, registry, use_ema: bool) -> tuple:
    import pydantic

    from distillkit.recipe import read_toml
    from distillkit.recipe.schema import ModelConfig, StudentConfig

    recipe_file = path.parent.parent / "recipe.toml"
    if not recipe_file.exists():
        raise ModelLoadError(f"{path} is a checkpoint, but its run folder has no recipe.toml to rebuild the "
                              f"student from")
    data = read_toml(recipe_file)
    try:  # the model and student sections only: no plugin, no check of the machine the run was trained on
        model = ModelConfig.model_validate(data.get("model", {}))
        s = StudentConfig.model_validate(data.get("student", {}))
        resolution = int(data.get("data", {}).get("resolution", 512))
    except (pydantic.ValidationError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{recipe_file} cannot describe the student of this checkpoint: {exc}") from None
    backbone = _backbone_cls(model.family, registry).from_pretrained(
        model.pretrained, dtype=resolve_dtype(model.dtype), revision=model.revision, variant=model.variant,
        device=device)
    student = Student.build(backbone, s.timesteps, init="teacher", lora=s.lora.model_dump() if s.lora else None,
                            zero_terminal_snr=s.zero_terminal_snr, first_input=s.first_input, renoise=s.renoise)
    student.load_state_dict(student_weights(path, use_ema))
    return backbone, student, resolution


def _newest_intact_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint whose files match its manifest; damaged newer ones are skipped with a warning
    (as a resume skips them), so a run folder never samples from a half-written or corrupted step."""
    import logging

    for _, ckpt in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        logging.getLogger("distillkit").warning("skipping checkpoint %s: %s", ckpt, problem)
    return None


def load_student(path: str | Path, device="cpu", use_ema: bool = True, registry=None) -> tuple:
    """(backbone, student, resolution) from a final folder, a checkpoint dir or a run dir."""
    path = Path(path)
    if (path / META).exists():
        return _from_final(path, device, registry)
    if (path / MARKER).exists():
        problem = verify_checkpoint(path)
        if problem:
            raise ModelLoadError(f"checkpoint {path} cannot be trusted: {problem}; sample an earlier checkpoint "
                                 f"of the run (its checkpoints/ folder) instead")
        return _from_checkpoint(path, device, registry, use_ema)
    if (path / "recipe.toml").exists():
        if (path / "final" / META).exists():
            return _from_final(path / "final", device, registry)
        ckpt = _newest_intact_checkpoint(path / "checkpoints")
        if ckpt is not None:
            return _from_checkpoint(ckpt, device, registry, use_ema)
    raise ModelLoadError(f"{path} is not a distillkit run, checkpoint or exported student (expected {META}, a "
                          f"{MARKER} checkpoint marker, or recipe.toml with checkpoints/)")
