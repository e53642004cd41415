"""What a run has spent: the counters behind ``budget/*`` metrics and the ``run.max_*`` limits.

Methods update at different rates (DMD2 moves the student one step in five, a critic may update several
times per step), so "the same budget" is only comparable in these units: student and critic updates,
training examples seen, student samples drawn, samples through any UNet forward, backward passes, and
training wall time, each summed over resumes (they are saved in ``state.json``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

#: the plain counters; ``critic_updates`` (per critic id) and ``wall_s`` are kept beside them
COUNTERS = ("student_updates", "images_seen", "backward_passes", "student_samples", "unet_forward_samples")


def new_counters() -> dict[str, Any]:
    return {**{k: 0 for k in COUNTERS}, "critic_updates": {}, "wall_s": 0.0}


def count_unet_passes(roles, counters: dict) -> None:
    """Count every sample that goes through a UNet forward (teacher, student, critics) with a pre-hook on
    each distinct UNet module (a shared base is hooked once, whichever role calls it)."""
    seen: set[int] = set()
    modules = [roles.backbone.base_unet, roles.backbone.teacher_unet, roles.student.unet.module]
    for critic in roles.critics.values():
        modules += [m for m in critic.modules() if hasattr(m, "down_blocks")]
        modules += [ref.module for ref in getattr(critic, "_adopted", {}).values()]

    def count(_module, args) -> None:
        if args and isinstance(args[0], torch.Tensor):
            counters["unet_forward_samples"] += int(args[0].shape[0])

    for m in modules:
        if isinstance(m, torch.nn.Module) and id(m) not in seen:
            seen.add(id(m))
            m.register_forward_pre_hook(count)


def spent(counters: dict, prefixed: bool = False) -> dict[str, Any]:
    """The counters as flat numbers: all critics' updates summed, and per critic id."""
    flat = {k: v for k, v in counters.items() if k != "critic_updates"}
    flat["critic_updates"] = sum(counters["critic_updates"].values())
    for cid, n in counters["critic_updates"].items():
        flat[f"critic_updates/{cid}"] = n
    return {f"budget/{k}": v for k, v in flat.items()} if prefixed else flat


def limit_reached(run, counters: dict) -> Optional[str]:
    """The first of ``run.max_time``/``max_student_updates``/``max_images`` that has been reached."""
    for key, limit, used in (("max_time", run.max_time, counters["wall_s"]),
                             ("max_student_updates", run.max_student_updates, counters["student_updates"]),
                             ("max_images", run.max_images, counters["images_seen"])):
        if limit and used >= limit:
            return f"run.{key} = {limit:g} reached"
    return None
