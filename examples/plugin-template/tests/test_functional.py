"""The loss maths against values worked out by hand: softplus(x) = log(1 + e^x)."""

import math

import torch

from distillkit_template.functional import discriminator_logistic, generator_logistic


def test_generator_logistic_by_hand():
    # softplus(-0) = log 2; softplus(-log 3) = log(1 + 1/3) = log(4/3)
    value = generator_logistic(torch.tensor([0.0, math.log(3.0)]))
    assert math.isclose(float(value), (math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel_tol=1e-6)


def test_discriminator_logistic_by_hand():
    # real logit log 3: softplus(-log 3) = log(4/3); fake logit log 3: softplus(log 3) = log 4
    d_real, d_fake = discriminator_logistic(torch.tensor([math.log(3.0)]), torch.tensor([math.log(3.0)]))
    assert math.isclose(float(d_real), math.log(4.0 / 3.0), rel_tol=1e-6)
    assert math.isclose(float(d_fake), math.log(4.0), rel_tol=1e-6)


def test_the_generator_is_pushed_towards_real():
    # d/dz softplus(-z) = -sigmoid(-z) < 0: minimising raises the fake logit (towards "real")
    z = torch.zeros(3, requires_grad=True)
    generator_logistic(z).backward()
    assert torch.allclose(z.grad, torch.full((3,), -0.5 / 3))
