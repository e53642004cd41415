"""Exact toy metrics: at the noise floor on exact samples, clearly worse on broken sample sets, and the
coverage / precision definitions on hand-built sets whose values are known."""

from __future__ import annotations

import pytest
import torch

from distillkit.toy.metrics import noise_floor, toy_metrics
from distillkit.toy.world import default_world

PER_PROMPT = 256


@pytest.fixture(scope="module")
def world():
    return default_world()


@pytest.fixture(scope="module")
def floor(world):
    return noise_floor(world, world.balanced_prompts(PER_PROMPT), seed=1)


def test_exact_samples_sit_at_the_noise_floor(world, floor):
    prompts = world.balanced_prompts(PER_PROMPT)
    samples, _ = world.sample(prompts, torch.Generator().manual_seed(2))  # another seed than the floor's
    got = toy_metrics(world, samples, prompts).overall
    assert got["fd"] < 1.5 * floor.overall["fd"] + 0.1
    assert got["mode_tv"] < floor.overall["mode_tv"] + 0.05
    assert got["modes"] == floor.overall["modes"] == 1.0
    assert got["alignment"] == floor.overall["alignment"] == 1.0
    assert got["precision"] == floor.overall["precision"] == 1.0
    # the floor shrinks with the sample size (it is finite-sample noise, not a bias of the metric)
    assert noise_floor(world, world.balanced_prompts(4 * PER_PROMPT), seed=1).overall["fd"] < floor.overall["fd"] / 2


def _at_component(world, comps: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(comps)
    return world.means[idx] + world.stds[idx].view(-1, 1, 1, 1) * torch.randn(
        (len(comps), *world.image_shape), generator=g, dtype=torch.float64)


def test_mode_collapse_is_clearly_worse(world, floor):
    # every sample an exact draw of its prompt's heaviest component (weight 0.4)
    prompts = world.balanced_prompts(PER_PROMPT)
    heaviest = [int(world.components_of(world.prompt_index(p))[0]) for p in prompts]
    got = toy_metrics(world, _at_component(world, heaviest), prompts).overall
    assert got["fd"] > 20 * floor.overall["fd"]
    assert got["mode_tv"] == pytest.approx(0.6)  # 1 − 0.4: all mass on one component
    assert got["modes"] == pytest.approx(0.25)  # one of four components covered
    assert got["alignment"] == 1.0 and got["precision"] == 1.0  # sharp, and of the right prompt


def test_wrong_prompt_and_blur_are_caught(world):
    prompts = world.balanced_prompts(32)
    # images of the next prompt: perfect images, none of them aligned
    shifted = [world.prompts[(world.prompt_index(p) + 1) % len(world.prompts)] for p in prompts]
    samples, _ = world.sample(shifted, torch.Generator().manual_seed(3))
    assert toy_metrics(world, samples, prompts).overall["alignment"] == 0.0
    # each prompt's mean image (the 1-step posterior mean from pure noise): a blur between modes
    blurred = torch.stack([world.moments(p)[0].reshape(world.image_shape) for p in prompts])
    assert toy_metrics(world, blurred, prompts).overall["precision"] == 0.0


def test_coverage_on_hand_counted_assignments(world):
    p = world.prompts[0]
    own = world.components_of(0).tolist()  # weights 0.4, 0.3, 0.2, 0.1
    # shares 0.4, 0.4, 0.1, 0.1: TV = ½(0 + 0.1 + 0.1 + 0) = 0.1; every share >= half its weight
    comps = [own[0]] * 4 + [own[1]] * 4 + [own[2]] + [own[3]]
    got = toy_metrics(world, _at_component(world, comps), [p] * 10).per_prompt[p]
    assert got["mode_tv"] == pytest.approx(0.1) and got["modes"] == 1.0
    # shares 0.5, 0.5, 0, 0: TV = ½(0.1 + 0.2 + 0.2 + 0.1) = 0.3; two of four covered
    comps = [own[0]] * 5 + [own[1]] * 5
    got = toy_metrics(world, _at_component(world, comps), [p] * 10).per_prompt[p]
    assert got["mode_tv"] == pytest.approx(0.3) and got["modes"] == 0.5


def test_precision_radius_is_two_standard_deviations(world):
    p = world.prompts[0]
    k = int(world.components_of(0)[1])
    direction = torch.randn(world.image_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    direction = direction / direction.pow(2).mean().sqrt()  # RMS 1 per pixel
    s = float(world.stds[k])
    near = world.means[k] + 1.9 * s * direction
    far = world.means[k] + 2.1 * s * direction
    got = toy_metrics(world, torch.stack([near, near, far, far]), [p] * 4).per_prompt[p]
    assert got["precision"] == 0.5


def test_per_prompt_fd_uses_the_prompt_moments(world):
    # samples of the right prompt score low; the same images presented as another prompt score high
    prompts = [world.prompts[0]] * PER_PROMPT
    samples, _ = world.sample(prompts, torch.Generator().manual_seed(5))
    right = toy_metrics(world, samples, prompts).per_prompt[world.prompts[0]]["fd"]
    wrong = toy_metrics(world, samples, [world.prompts[1]] * PER_PROMPT).per_prompt[world.prompts[1]]["fd"]
    assert wrong > 20 * right
