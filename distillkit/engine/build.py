"""From a resolved recipe to the roles of a run: backbone, teacher, student, critics, losses, and what trains.

Everything random in here (a random student, LoRA matrices, critic heads) is seeded from the run seed and
the role's name, so every process, and a resumed run, starts from the same weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from distillkit.engine.trained import Trained, make_optimizer
from distillkit.errors import PluginError, RecipeError
from distillkit.models.loading import resolve_dtype
from distillkit.roles.critic import BuildEnv, Critic
from distillkit.roles.student import Student
from distillkit.roles.teacher import Teacher
from distillkit.utils import seeded


def seed_for(*parts) -> int:
    """A 63-bit seed from any tuple of values (run seed, step, rank, purpose...): stable across runs."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class BoundLoss:
    """A loss of the recipe, built: its entry, the instance, its metric label and its critics by role."""

    entry: Any  # recipe LossEntry
    loss: Any  # the Loss instance
    label: str  # qualified name, or name[i] when the recipe has it twice
    critic_ids: dict[str, str] = field(default_factory=dict)  # role -> critic instance id

    @property
    def has_critic_term(self) -> bool:
        return bool(self.critic_ids) and type(self.loss).has_critic_term()


@dataclass
class Roles:
    backbone: Any
    teacher: Teacher
    student: Student
    critics: dict[str, Critic]
    losses: list[BoundLoss]
    trained: dict[str, Trained]  # "student" first, then each critic id


def build_roles(resolved, device: torch.device) -> Roles:
    """Load the backbone and build every role the recipe names (no optimiser state is restored here)."""
    r = resolved.recipe
    backbone = resolved.backbone_cls.from_pretrained(
        r.model.pretrained, dtype=resolve_dtype(r.model.dtype), revision=r.model.revision,
        variant=r.model.variant, device=device)
    check_model_fits(backbone, resolved)
    teacher = Teacher(backbone, backbone.teacher_unet, r.teacher.guidance_scale)
    s = r.student
    student = Student.build(backbone, s.timesteps, init=s.init, lora=s.lora.model_dump() if s.lora else None,
                            seed=seed_for(r.run.seed, "init", "student"), zero_terminal_snr=s.zero_terminal_snr,
                            first_input=s.first_input, renoise=s.renoise)
    opt, sched = make_optimizer(student.trainable_parameters(), s.optim, "student.optim")
    trained = {"student": Trained("student", "student", student.named_parameters(), opt, sched, s.optim.grad_clip)}

    critics: dict[str, Critic] = {}
    for i, rc in enumerate(resolved.critics):
        seed = seed_for(r.run.seed, "init", "critic", rc.id)
        env = BuildEnv(backbone, teacher, student, r.data.resolution, device, role=rc.id, seed=seed)
        with seeded(seed):  # same start in every process
            critic = rc.cls.build(rc.config, env).to(device)
        named = critic.named_trainable()
        if not named:
            raise PluginError(f"critic {rc.entry.name!r} ({rc.id}) has no trainable parameters: its plugin must "
                              f"create some with requires_grad=True (or adopt an adapter)")
        field = f"critics[{r.critics.index(rc.entry)}].optim" if rc.entry in r.critics else f"critics[{i}].optim"
        opt, sched = make_optimizer(list(named.values()), rc.entry.optim, field)
        critics[rc.id] = critic
        trained[rc.id] = Trained(rc.id, "critic", named, opt, sched, rc.entry.optim.grad_clip,
                                 rc.entry.updates_per_step)

    names = [rl.entry.name for rl in resolved.losses]
    losses = [BoundLoss(rl.entry, rl.cls(rl.config),
                        rl.entry.name if names.count(rl.entry.name) == 1 else f"{rl.entry.name}[{i}]",
                        dict(rl.critic_ids))
              for i, rl in enumerate(resolved.losses)]
    return Roles(backbone, teacher, student, critics, losses, trained)


def check_model_fits(backbone, resolved) -> None:
    """Recipe facts only the loaded model can check: timesteps within its schedule, a resolution its
    VAE and UNet can halve down to the bottleneck (diffusers would fail deep inside otherwise)."""
    r = resolved.recipe
    problems = []
    T = backbone.schedule.num_train_timesteps
    if max(r.student.timesteps) >= T:
        problems.append(f"student.timesteps: {max(r.student.timesteps)} is beyond the teacher's {T} training "
                        f"timesteps; use values in [0, {T - 1}]")
    blocks = getattr(getattr(backbone.base_unet, "config", None), "block_out_channels", None)
    if blocks:
        factor = backbone.spatial_factor * 2 ** (len(blocks) - 1)
        res = r.data.resolution
        if res % factor:
            ok = max(factor, round(res / factor) * factor)
            problems.append(f"data.resolution: {res} is not a multiple of {factor} ({backbone.family}: "
                            f"{backbone.spatial_factor}x VAE downsampling x {len(blocks) - 1} UNet downsamplings); "
                            f"use e.g. {ok}")
    if problems:
        raise RecipeError(problems, resolved.source)

