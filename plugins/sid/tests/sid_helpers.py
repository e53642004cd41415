"""Test helpers: the roles of a tiny model, a hand-built StepContext, and a log of every network call."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from distillkit import BuildEnv, Phase, StepContext, Student, Teacher
from distillkit.roles.fake_score import FakeScore, FakeScoreConfig

PROMPTS = ["a red circle", "a blue square"]
RES = 32


@dataclass
class Roles:
    backbone: object
    teacher: Teacher
    student: Student
    fake: FakeScore


def build_roles(backbone, teacher_scale: float = 2.0, timesteps=(625,), fake_lora=None) -> Roles:
    teacher = Teacher(backbone, backbone.teacher_unet, teacher_scale)
    student = Student.build(backbone, list(timesteps), first_input="sigma_noise", seed=0)
    env = BuildEnv(backbone=backbone, teacher=teacher, student=student, resolution=RES, device=torch.device("cpu"),
                   role="fake_score", seed=1)
    config = FakeScoreConfig(lora={"rank": 2} if fake_lora else None)
    return Roles(backbone, teacher, student, FakeScore(config, env))


def context(roles: Roles, phase: Phase, x0: torch.Tensor, seed: int = 0, extra_critics=None,
            real_x0=None) -> StepContext:
    b = roles.backbone
    return StepContext(real_x0=real_x0, 
        phase=phase, step=0, backbone=b, teacher=roles.teacher, student=roles.student, prompts=PROMPTS,
        cond=b.encode_prompts(PROMPTS, RES), uncond=b.empty_conditioning(len(PROMPTS), RES), resolution=RES,
        student_x0=x0, student_t=torch.full((x0.shape[0],), 625), student_input=x0.detach(),
        critics={"fake_score": roles.fake, **(extra_critics or {})}, generator=torch.Generator().manual_seed(seed))


def student_x0(roles: Roles, seed: int = 0) -> torch.Tensor:
    """The student's one-step sample on the prompts, with its graph."""
    b = roles.backbone
    noise = torch.randn(b.sample_shape(len(PROMPTS), RES), generator=torch.Generator().manual_seed(seed))
    cond = b.encode_prompts(PROMPTS, RES)
    return roles.student.run_steps(noise, cond, roles.student.timesteps[:1], grad_last=True).x0


def network_of(roles: Roles, unet) -> str:
    module = getattr(unet, "module", unet)
    adapter = getattr(unet, "adapter", None)
    if module is roles.backbone.teacher_unet and adapter is None:
        return "teacher"
    if module is roles.student.unet.module and adapter == roles.student.adapter:
        return "student"
    if module is roles.fake.unet.module and adapter == roles.fake.unet.adapter:
        return "fake"
    return "other"


@contextlib.contextmanager
def call_log(roles: Roles, empty):
    """Record every UNet call as (network, kind, per-row 'is the empty prompt' flags, grad enabled)."""
    b = roles.backbone
    calls: list[tuple[str, str, list[bool], bool]] = []
    denoise, features = b.denoise, b.features

    def rows(cond):
        e = empty.embeds[:1]
        return [bool(torch.equal(row, e[0])) for row in cond.embeds]

    def logged_denoise(unet, x_t, t, cond):
        calls.append((network_of(roles, unet), "denoise", rows(cond), torch.is_grad_enabled() and x_t.requires_grad))
        return denoise(unet, x_t, t, cond)

    def logged_features(unet, x_t, t, cond):
        calls.append((network_of(roles, unet), "features", rows(cond), torch.is_grad_enabled() and x_t.requires_grad))
        return features(unet, x_t, t, cond)

    b.denoise, b.features = logged_denoise, logged_features
    try:
        yield calls
    finally:
        del b.denoise, b.features
