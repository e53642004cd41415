"""SiD's generator gradient runs through the teacher's and the fake score's inputs, never into their weights.

A ``no_grad`` (or detached) teacher and fake score leave the loss's value unchanged but drop the
Jacobian terms through both networks: on the tiny model the two gradients differ by about the full
gradient's norm, which is what makes SiD a different method from DMD's direct path.
"""

import contextlib

import pytest
import torch

from distillkit import Engine, Phase
from distillkit_sid.losses import SiD, SiDConfig
from sid_helpers import PROMPTS, build_roles, context, student_x0

PARAMS = {"teacher_scale": 3.0, "fake_scale": 1.0, "alpha": 1.2}  # teacher ≠ fake, so the loss has a gradient


def _student_grad(roles, through: bool):
    x = student_x0(roles)  # the same sample and draws each time (seeded)
    ctx = context(roles, Phase.GENERATOR, x)
    out = SiD(SiDConfig(**PARAMS, through_networks=through)).generator_loss(ctx)
    params = roles.student.trainable_parameters()
    grads = torch.autograd.grad(out.total, params, retain_graph=True)
    return out.total, torch.cat([g.flatten() for g in grads])


@contextlib.contextmanager
def trainable(params):
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _reaches(total, params) -> bool:
    grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_gradient_through_both_networks_differs_from_the_stop_gradient_one(tiny_sd15):
    roles = build_roles(tiny_sd15)
    full_value, full = _student_grad(roles, through=True)
    sg_value, sg = _student_grad(roles, through=False)
    assert full_value.item() == pytest.approx(sg_value.item(), rel=1e-5)  # same loss value...
    ratio = ((full - sg).norm() / full.norm()).item()
    assert full.norm() > 0 and ratio > 0.5, f"...but the gradients should differ by O(|g|); got ratio {ratio:.3f}"


@pytest.mark.parametrize("fake_lora", [False, True], ids=["fake copy", "fake adapter"])
def test_the_graph_reaches_both_networks_weights_only_when_made_trainable(tiny_sd15, fake_lora):
    roles = build_roles(tiny_sd15, fake_lora=fake_lora)
    teacher_weights = [p for n, p in roles.backbone.teacher_unet.named_parameters() if "lora" not in n]
    fake_weights = roles.fake.trainable_parameters()
    for through in (True, False):
        with trainable(teacher_weights + fake_weights):
            x = student_x0(roles)
            out = SiD(SiDConfig(**PARAMS, through_networks=through)).generator_loss(context(roles, Phase.GENERATOR, x))
            assert _reaches(out.total, teacher_weights) == through
            assert _reaches(out.total, fake_weights) == through
        assert not any(p.requires_grad for p in teacher_weights)


def test_a_generator_update_moves_the_student_and_neither_network(tiny_sd15_path, tmp_path):
    """A full engine step whose critic term has weight 0: the fake score's optimiser (Adam, β1 = 0) then
    steps on a zero gradient, so any weight of the teacher or the fake score that moves was moved by the
    generator phase, which runs first here (a leaked gradient would be applied by that critic update)."""
    recipe = {
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "sample_every": 0, "progress": False},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [625], "input": "noise", "first_input": "sigma_noise",
                    "optim": {"lr": 1e-3, "betas": [0.0, 0.999]}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": PROMPTS, "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu", "critic_first": False, "generator_sample": "fresh"},
        "critics": [{"name": "core.fake_score", "id": "fake", "optim": {"lr": 1e-3, "betas": [0.0, 0.999]}}],
        "losses": [{"name": "sid.sid", "critic_weight": 0.0, "params": PARAMS}],
        "sample": {"prompts": ["a"], "steps": [1]},
    }
    engine = Engine.from_recipe(recipe).setup()
    fake0 = {k: v.clone() for k, v in engine.critics["fake"].trainable_state_dict().items()}
    teacher0 = {k: v.clone() for k, v in engine.backbone.teacher_unet.state_dict().items()}
    student0 = {k: v.clone() for k, v in engine.student.state_dict().items()}
    metrics = engine.step()
    assert metrics["grad_norm/student"] > 0 and metrics["grad_norm/fake"] == 0
    assert all(torch.equal(v, engine.critics["fake"].trainable_state_dict()[k]) for k, v in fake0.items())
    assert all(torch.equal(v, engine.backbone.teacher_unet.state_dict()[k]) for k, v in teacher0.items())
    assert any(not torch.equal(v, engine.student.state_dict()[k]) for k, v in student0.items())
