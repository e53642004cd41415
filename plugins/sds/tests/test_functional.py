"""The score-distillation maths on small tensors: every surrogate's autograd gradient is its stated direction,
against values worked out by hand in the comments.

What each check catches (each was planted once to see it fail): a target that is not detached (the gradient
vanishes), a sign flip in a direction, the wrong reduction (g/numel where threestudio has g/B), the NFSD
switch on the wrong side of t = 200, a DMD normaliser over the batch instead of per sample, a DreamFusion ω
used as if it were a diffusers scale.
"""

import math

import pytest
import torch

from distillkit.diffusion import cfg_combine
from distillkit_sds import functional as Fn


def grad_of(loss_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x), x)
    return g


def t2(rows) -> torch.Tensor:
    """(B, 1, 1, n) from a list of per-sample rows: small latents whose every element is written out."""
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 1, 1, -1)


# -- the surrogate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction,divisor", [("sum", 3), ("mean", 3 * 4 * 2 * 2)])
def test_surrogate_gradient_is_the_direction_over_the_reduction(reduction, divisor):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 2, generator=gen)
    g = torch.randn(3, 4, 2, 2, generator=gen)
    grad = grad_of(lambda v: Fn.surrogate_loss(v, g, reduction), x)
    torch.testing.assert_close(grad, g / divisor)  # "sum": threestudio's sum/B; "mean": DMD2's mean
    value = Fn.surrogate_loss(x, g, reduction)
    torch.testing.assert_close(value, 0.5 * g.pow(2).sum() / divisor)  # ½‖g‖² under the same reduction


def test_clean_direction_is_nan_to_num_then_clamp():
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -3.0])
    torch.testing.assert_close(Fn.clean_direction(g, clamp=1.0), torch.tensor([0.0, 1.0, -1.0, 0.5, -1.0]))
    kept = Fn.clean_direction(g, clamp=None, nan_to_num=False)
    assert torch.isnan(kept[0]) and torch.isinf(kept[1]) and kept[4] == -3.0


# -- SDS ------------------------------------------------------------------------------------------------
def test_sds_surrogate_gradient_is_w_times_guided_minus_injected_noise():
    eps_hat = t2([[0.5, -1.0], [2.0, 0.0]])
    noise = t2([[0.25, 0.25], [1.0, 1.0]])
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    # sample 0: 0.5·(0.25, −1.25) = (0.125, −0.625); sample 1: 2·(1, −1) = (2, −2)
    expected = t2([[0.125, -0.625], [2.0, -2.0]])
    g = Fn.sds_direction(eps_hat, noise, w)
    torch.testing.assert_close(g, expected)
    x = t2([[3.0, 1.0], [-1.0, 0.0]])
    torch.testing.assert_close(grad_of(lambda v: Fn.surrogate_loss(v, g, "sum"), x), expected / 2)


def test_dreamfusion_omega_is_the_diffusers_scale_one_plus_omega():
    eps_c, eps_u = torch.tensor([1.0]), torch.tensor([0.5])
    # DreamFusion / threestudio SDS: ε_c + ω(ε_c − ε_u) = 1 + 100·0.5 = 51
    assert Fn.dreamfusion_to_diffusers(100) == 101
    torch.testing.assert_close(cfg_combine(eps_c, eps_u, Fn.dreamfusion_to_diffusers(100)), torch.tensor([51.0]))
    assert cfg_combine(eps_c, eps_u, 100.0).item() == 50.5  # ω taken as a diffusers scale: a different target


# -- NFSD -----------------------------------------------------------------------------------------------
def test_nfsd_surrogate_gradient_on_both_sides_of_t_200():
    eps_c = t2([[1.0], [1.0], [1.0]])
    eps_u = t2([[0.4], [0.4], [0.4]])
    eps_n = t2([[0.1], [0.1], [0.1]])
    t = torch.tensor([100, 199, 200])
    w = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    # δ_C = 0.6, s δ_C = 4.5; t < 200: δ_D = ε(∅) = 0.4 → 4.9; t ≥ 200: δ_D = 0.4 − 0.1 = 0.3 → 4.8
    expected = t2([[2.0 * 4.9], [1.0 * 4.9], [0.5 * 4.8]])
    g = Fn.nfsd_direction(eps_c, eps_u, eps_n, t, w, scale=7.5, threshold=200)
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(grad_of(lambda v: Fn.surrogate_loss(v, g, "sum"), torch.zeros(3, 1, 1, 1)),
                               (expected / 3).float())


# -- VSD ------------------------------------------------------------------------------------------------
def test_vsd_surrogate_gradient_is_w_times_teacher_minus_fake():
    eps_teacher = t2([[1.0, -2.0]])
    eps_fake = t2([[0.5, 0.5]])
    w = torch.tensor([0.8], dtype=torch.float64)
    expected = t2([[0.4, -2.0]])  # 0.8·(0.5, −2.5)
    g = Fn.vsd_direction(eps_teacher, eps_fake, w)
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(grad_of(lambda v: Fn.surrogate_loss(v, g, "sum"), t2([[0.0, 0.0]])), expected)


def test_vsd_with_a_perfect_fake_score_is_sds():
    """For a one-point student the exact fake score predicts the injected noise itself, ε̂_fake = ε."""
    gen = torch.Generator().manual_seed(1)
    eps_teacher, noise = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    w = torch.tensor([0.3, 0.9])
    x = torch.randn(2, 4, 3, 3, generator=gen)
    vsd = grad_of(lambda v: Fn.surrogate_loss(v, Fn.vsd_direction(eps_teacher, noise, w), "sum"), x)
    sds = grad_of(lambda v: Fn.surrogate_loss(v, Fn.sds_direction(eps_teacher, noise, w), "sum"), x)
    assert torch.equal(vsd, sds)


# -- DMD2 -----------------------------------------------------------------------------------------------
def test_x0_from_eps_in_float64():
    x0 = Fn.x0_from_eps_float64(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([0.8]), torch.tensor([0.6]))
    assert x0.dtype == torch.float64
    torch.testing.assert_close(x0, torch.tensor([[0.875]], dtype=torch.float64))  # (1 − 0.6·0.5)/0.8


def test_dmd_surrogate_gradient_is_the_normalised_x0_gap_per_sample():
    x = t2([[2.0, 0.0], [0.0, 0.0]])
    x0_teacher = t2([[1.0, 1.0], [2.0, -2.0]])
    x0_fake = t2([[1.5, 0.0], [1.0, 1.0]])
    # sample 0: mean|x − x̂0_teacher| = mean(1, 1) = 1 → g = (0.5, −1); sample 1: mean(2, 2) = 2 → g = (−1, 3)/2
    expected = t2([[0.5, -1.0], [-0.5, 1.5]])
    g = Fn.dmd_direction(x, x0_teacher, x0_fake)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(grad_of(lambda v: Fn.surrogate_loss(v, g, "mean"), x), expected / 4)


def test_dmd_direction_is_the_vsd_direction_in_x0_terms_up_to_a_positive_per_sample_factor():
    """ε_teacher − ε_fake = (α/σ)(x̂0_fake − x̂0_teacher) at the same x_t, so g_VSD = w(α/σ)·mean|x − x̂0_teacher|·g_DMD."""
    gen = torch.Generator().manual_seed(2)
    b = 3
    x = torch.randn(b, 4, 4, 4, generator=gen, dtype=torch.float64)
    x_t = torch.randn(b, 4, 4, 4, generator=gen, dtype=torch.float64)
    eps_teacher = torch.randn(b, 4, 4, 4, generator=gen, dtype=torch.float64)
    eps_fake = torch.randn(b, 4, 4, 4, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    x0_teacher = (x_t - sigma.view(-1, 1, 1, 1) * eps_teacher) / alpha.view(-1, 1, 1, 1)  # written out, not Fn's
    x0_fake = (x_t - sigma.view(-1, 1, 1, 1) * eps_fake) / alpha.view(-1, 1, 1, 1)
    g_dmd = Fn.dmd_direction(x, x0_teacher, x0_fake)
    w = sigma**2
    g_vsd = Fn.vsd_direction(eps_teacher, eps_fake, w)
    factor = w * alpha / sigma * (x - x0_teacher).abs().flatten(1).mean(dim=1)
    assert bool((factor > 0).all())
    torch.testing.assert_close(g_vsd, factor.view(-1, 1, 1, 1) * g_dmd)


# -- DMD2's GAN terms --------------------------------------------------------------------------------
def test_dmd2_gan_terms_are_the_non_saturating_logistic_means():
    ln = math.log
    fake = torch.tensor([[0.0], [ln(3.0)]])
    # G: mean softplus(−D) = (ln 2 + ln(1 + 1/3)) / 2
    torch.testing.assert_close(Fn.dmd2_generator_gan(fake), torch.tensor((ln(2.0) + ln(4.0 / 3.0)) / 2))
    d_real, d_fake = Fn.dmd2_discriminator_gan(torch.tensor([[ln(3.0)]]), torch.tensor([[ln(3.0)]]))
    torch.testing.assert_close(d_real, torch.tensor(ln(4.0 / 3.0)))  # softplus(−ln 3) = ln(4/3)
    torch.testing.assert_close(d_fake, torch.tensor(ln(4.0)))  # softplus(ln 3) = ln 4
