"""SiD's maths against values derived by hand (the comments show each derivation)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distillkit_sid import functional as Fn


def as_sample(*values: float) -> torch.Tensor:
    """One sample (1, 1, 1, n)."""
    return torch.tensor(values).reshape(1, 1, 1, -1)


# Sample A: x_g = [1, 0], f_φ = [2, 1], f_ψ = [1.5, 2]
#   |x_g − f_φ| = [1, 1] → w = 1;  d = f_φ − f_ψ = [0.5, −1], ‖d‖² = 1.25
#   f_φ − x_g = [1, 1], f_ψ − x_g = [0.5, 2]
#   L(1) = d·(f_ψ − x_g) = 0.25 − 2 = −1.75;  L(0) = d·(f_φ − x_g) = 0.5 − 1 = −0.5
#   L(1.2) = d·([1, 1] − 1.2 d) = d·[0.4, 2.2] = 0.2 − 2.2 = −2.0
XA, RA, FA = as_sample(1.0, 0.0), as_sample(2.0, 1.0), as_sample(1.5, 2.0)
# Sample B: x_g = [0, 0], f_φ = [4, 0], f_ψ = [3, 1] → w = 2, d = [1, −1]
#   L(1) = d·(f_ψ − x_g)/w = (3 − 1)/2 = 1
XB, RB, FB = as_sample(0.0, 0.0), as_sample(4.0, 0.0), as_sample(3.0, 1.0)


def test_weight_factor_is_the_mean_absolute_gap_clipped_below_and_without_gradient():
    x = torch.cat([XA, XB]).requires_grad_(True)
    w = Fn.weight_factor(x, torch.cat([RA, RB]))
    assert w.tolist() == [1.0, 2.0] and not w.requires_grad
    same = Fn.weight_factor(XA, XA)  # x_g = f_φ: the floor, not a division by zero
    assert same.item() == pytest.approx(1e-5)
    assert Fn.weight_factor(XA, XA, floor=0.25).item() == 0.25


@pytest.mark.parametrize("alpha,expected", [(1.0, -1.75), (0.0, -0.5), (1.2, -2.0)])
def test_generator_loss_per_sample_by_hand(alpha, expected):
    assert Fn.sid_per_sample(XA, RA, FA, alpha).item() == pytest.approx(expected)


def test_closed_forms_at_alpha_one_and_zero():
    # L(1) = (f_φ − f_ψ)ᵀ(f_ψ − x_g)/w and L(0) = (f_φ − f_ψ)ᵀ(f_φ − x_g)/w on random tensors
    g = torch.Generator().manual_seed(0)
    x, r, f = (torch.randn(3, 4, 5, 5, generator=g) for _ in range(3))
    w = (x - r).abs().flatten(1).mean(1)
    d = (r - f).flatten(1)
    assert torch.allclose(Fn.sid_per_sample(x, r, f, 1.0), (d * (f - x).flatten(1)).sum(1) / w, atol=1e-5)
    assert torch.allclose(Fn.sid_per_sample(x, r, f, 0.0), (d * (r - x).flatten(1)).sum(1) / w, atol=1e-5)


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 0.7, 1.2, 2.0])
def test_identity_L_alpha_is_L_one_plus_one_minus_alpha_times_the_squared_gap(alpha):
    g = torch.Generator().manual_seed(1)
    x, r, f = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    w = (x - r).abs().flatten(1).mean(1)
    gap = (r - f).pow(2).flatten(1).sum(1) / w
    assert torch.allclose(Fn.sid_per_sample(x, r, f, alpha), Fn.sid_per_sample(x, r, f, 1.0) + (1 - alpha) * gap,
                          atol=1e-5)


def test_reduction_is_the_sum_over_elements_divided_by_the_batch_times_lsg():
    # per sample [L_A(1), L_B(1)] = [−1.75, 1] → Σ/B = −0.375; × lsg 100 = −37.5
    x, r, f = torch.cat([XA, XB]), torch.cat([RA, RB]), torch.cat([FA, FB])
    assert Fn.sid_generator_loss(x, r, f, alpha=1.0).item() == pytest.approx(-0.375)
    assert Fn.sid_generator_loss(x, r, f, alpha=1.0, lsg=100.0).item() == pytest.approx(-37.5)


def test_direct_path_gradient_is_the_dmd_direction_for_every_alpha():
    # With f_φ, f_ψ held fixed, ∂L/∂x_g = −(f_φ − f_ψ)/w whatever α (w carries no gradient):
    # sample A: −[0.5, −1] / 1 = [−0.5, 1]
    for alpha in (0.0, 1.0, 1.2):
        x = XA.clone().requires_grad_(True)
        Fn.sid_per_sample(x, RA, FA, alpha).sum().backward()
        assert x.grad.flatten().tolist() == pytest.approx([-0.5, 1.0])


def test_an_explicit_weight_replaces_w():
    assert Fn.sid_per_sample(XA, RA, FA, 1.0, weight=torch.tensor([4.0])).item() == pytest.approx(-1.75 / 4)


def test_fake_score_loss_sums_per_sample_and_averages_the_batch():
    # ‖[1, 2]‖² = 5 and ‖[0, 1]‖² = 1 → mean 3; × scale 2 = 6
    pred = torch.cat([as_sample(1.0, 2.0), as_sample(0.0, 1.0)])
    assert Fn.fake_score_loss(pred, torch.zeros_like(pred)).item() == pytest.approx(3.0)
    assert Fn.fake_score_loss(pred, torch.zeros_like(pred), scale=2.0).item() == pytest.approx(6.0)


def test_prompt_dropout_rule():
    assert not Fn.needs_unconditional_branch(1.0, 1.0)
    assert Fn.needs_unconditional_branch(1.0, 2.0) and Fn.needs_unconditional_branch(0.0, 1.0)
    assert Fn.needs_unconditional_branch(-1.0, 1.0)


# -- diffusion-GAN ------------------------------------------------------------------------------------
def test_generator_term_is_bce_with_target_one_on_clamped_logits():
    g = torch.Generator().manual_seed(2)
    logits = 8 * torch.randn(3, 4, 4, generator=g)  # some beyond ±10
    bce = F.binary_cross_entropy_with_logits(logits.clamp(-10, 10), torch.ones_like(logits), reduction="none")
    assert Fn.gan_generator_loss(logits).item() == pytest.approx(bce.flatten(1).mean(1).mean().item(), rel=1e-6)


def test_discriminator_terms_are_bce_real_one_fake_zero_halved():
    g = torch.Generator().manual_seed(3)
    real, fake = 8 * torch.randn(2, 3, 3, generator=g), 8 * torch.randn(2, 3, 3, generator=g)
    d_real, d_fake = Fn.gan_discriminator_loss(real, fake)
    bce = F.binary_cross_entropy_with_logits
    want_real = bce(real.clamp(-10, 10), torch.ones_like(real), reduction="none").flatten(1).mean(1) / 2
    want_fake = bce(fake.clamp(-10, 10), torch.zeros_like(fake), reduction="none").flatten(1).mean(1) / 2
    assert d_real.item() == pytest.approx(want_real.mean().item(), rel=1e-6)
    assert d_fake.item() == pytest.approx(want_fake.mean().item(), rel=1e-6)


def test_gan_scaling_by_hand():
    # D = ln 3: softplus(−ln 3) = ln(4/3) (real→1 and the generator), softplus(ln 3) = ln 4 (fake→0)
    one = torch.full((1, 1, 1), math.log(3.0))
    # generator: ln(4/3) × weight 2 × elements 8 × scale 0.5 = 8 ln(4/3)
    got = Fn.gan_generator_loss(one, weight=torch.tensor([2.0]), elements=8, scale=0.5)
    assert got.item() == pytest.approx(8 * math.log(4 / 3))
    # discriminator: (ln(4/3), ln 4)/2 × elements 4 × scale 3
    d_real, d_fake = Fn.gan_discriminator_loss(one, one, elements=4, scale=3.0)
    assert (d_real.item(), d_fake.item()) == pytest.approx((6 * math.log(4 / 3), 6 * math.log(4.0)))


def test_clamp_flattens_value_and_gradient_beyond_ten():
    logits = torch.tensor([[15.0, -15.0, 3.0]], requires_grad=True)
    Fn.gan_generator_loss(logits).backward()
    g = logits.grad.flatten()
    assert g[0] == 0 and g[1] == 0 and g[2] == pytest.approx(-torch.sigmoid(torch.tensor(-3.0)).item() / 3)
    # the value: softplus(−10) at +15, softplus(10) at −15, softplus(−3) at 3, averaged
    want = (math.log1p(math.exp(-10)) + math.log1p(math.exp(10)) + math.log1p(math.exp(-3))) / 3
    assert Fn.gan_generator_loss(logits.detach()).item() == pytest.approx(want)
    unclamped = Fn.gan_generator_loss(logits.detach(), clamp=None).item()
    assert unclamped == pytest.approx((math.log1p(math.exp(-15)) + 15 + math.log1p(math.exp(-15))
                                       + math.log1p(math.exp(-3))) / 3, rel=1e-5)


# -- few-step schedule --------------------------------------------------------------------------------
def test_few_step_timesteps_from_t_init():
    # t_i = ⌊625 (1 − i/K)⌋: K = 4 → 625, 468.75 → 468, 312.5 → 312, 156.25 → 156
    assert Fn.few_step_timesteps(625, 4) == [625, 468, 312, 156]
    assert Fn.few_step_timesteps(625, 2) == [625, 312]
    assert Fn.few_step_timesteps(625, 1) == [625]
    with pytest.raises(ValueError):
        Fn.few_step_timesteps(625, 0)


def test_t_init_625_is_edm_sigma_two_and_a_half_on_the_sd_schedule():
    from distillkit.diffusion import NoiseSchedule

    schedule = NoiseSchedule.scaled_linear()
    assert float(schedule.edm_sigma(625)) == pytest.approx(2.5017, abs=1e-4)
    assert schedule.timestep_for_edm_sigma(2.5) == 625
