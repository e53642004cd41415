"""ADD's maths against values derived by hand (comments show the derivations)."""

import pytest
import torch

from distillkit.diffusion import NoiseSchedule, Prediction
from distillkit_add import functional as Fn

# Two heads, 2 samples × 3 tokens.
HEAD_A = torch.tensor([[0.5, 2.0, -1.0], [1.0, 0.0, 3.0]])
HEAD_B = torch.tensor([[0.0, 0.0, 0.0], [-2.0, 1.5, 0.5]])


# -- hinge --------------------------------------------------------------------------------------------
def test_hinge_d_real_term_paper_and_stylegan_t():
    # relu(1 − l):  A = [[0.5, 0, 2], [0, 1, 0]]   token means [2.5/3, 1/3]
    #               B = [[1, 1, 1], [3, 0, 0.5]]   token means [1, 3.5/3]
    # paper: per sample Σ_heads = [5.5/3, 4.5/3], batch mean = 5/3
    # stylegan_t: all 12 values sum to 10 → 10/12, then /B=2 → 5/12
    real, _ = Fn.hinge_d_loss([HEAD_A, HEAD_B], [HEAD_A, HEAD_B], "paper")
    assert real.item() == pytest.approx(5 / 3)
    real, _ = Fn.hinge_d_loss([HEAD_A, HEAD_B], [HEAD_A, HEAD_B], "stylegan_t")
    assert real.item() == pytest.approx(5 / 12)


def test_hinge_d_fake_term_paper_and_stylegan_t():
    # relu(1 + l):  A = [[1.5, 3, 0], [2, 1, 4]]   token means [1.5, 7/3]
    #               B = [[1, 1, 1], [0, 2.5, 1.5]] token means [1, 4/3]
    # paper: per sample [2.5, 11/3] → mean 37/12
    # stylegan_t: sum 11.5 + 7 = 18.5 → 18.5/12/2 = 37/48
    _, fake = Fn.hinge_d_loss([HEAD_A, HEAD_B], [HEAD_A, HEAD_B], "paper")
    assert fake.item() == pytest.approx(37 / 12)
    _, fake = Fn.hinge_d_loss([HEAD_A, HEAD_B], [HEAD_A, HEAD_B], "stylegan_t")
    assert fake.item() == pytest.approx(37 / 48)


def test_hinge_g_paper_and_stylegan_t():
    # token means: A = [0.5, 4/3], B = [0, 0]; paper: −Σ_k per sample = [−0.5, −4/3] → mean −11/12
    # stylegan_t: −(1.5 + 4 + 0 + 0)/12/2 = −11/48
    assert Fn.hinge_g_loss([HEAD_A, HEAD_B], "paper").item() == pytest.approx(-11 / 12)
    assert Fn.hinge_g_loss([HEAD_A, HEAD_B], "stylegan_t").item() == pytest.approx(-11 / 48)


def test_paper_reduction_weights_heads_equally_whatever_their_token_count():
    # Head C has 1 token, head D has 4: paper = mean over tokens per head, summed over heads.
    c = torch.tensor([[2.0]])  # −mean = −2
    d = torch.tensor([[0.0, 0.0, 0.0, 4.0]])  # −mean = −1
    assert Fn.hinge_g_loss([c, d], "paper").item() == pytest.approx(-3.0)
    # stylegan_t: −(2 + 4)/5 tokens /B=1 = −1.2
    assert Fn.hinge_g_loss([c, d], "stylegan_t").item() == pytest.approx(-1.2)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="paper"):
        Fn.hinge_g_loss([HEAD_A], "sum")


# -- R1 -----------------------------------------------------------------------------------------------
def test_r1_linear_heads_give_squared_weight_norms():
    # D_k(f) = Σ_tokens w_k·f_token, so ∇_f = w_k at every token: per sample N ||w_k||².
    w1, w2 = torch.tensor([1.0, 2.0, -2.0]), torch.tensor([3.0, 0.0, 4.0])  # ||w||² = 9, 25
    f1 = torch.randn(2, 3, 1, requires_grad=True)  # (B, C, N=1)
    f2 = torch.randn(2, 3, 4, requires_grad=True)  # N = 4
    l1 = torch.einsum("c,bcn->bn", w1, f1)
    l2 = torch.einsum("c,bcn->bn", w2, f2)
    # per sample 1·9 + 4·25 = 109 for both samples → batch mean 109
    assert Fn.r1_penalty([l1, l2], [f1, f2]).item() == pytest.approx(109.0)


def test_r1_quadratic_head_and_it_trains_the_head():
    # D(f) = a Σ f², ∇_f = 2a f, R1 per sample = 4a²||f||²; a = 0.5 → ||f||².
    f = torch.tensor([[[1.0], [2.0], [2.0]], [[0.0], [3.0], [4.0]]], requires_grad=True)  # ||f||² = 9, 25
    a = torch.tensor(0.5, requires_grad=True)
    logits = a * f.pow(2).sum(dim=1)
    r1 = Fn.r1_penalty([logits], [f])
    assert r1.item() == pytest.approx(17.0)  # (9 + 25)/2
    # create_graph: dR1/da = 8a·mean||f||² = 8·0.5·17 = 68
    (grad_a,) = torch.autograd.grad(r1, a)
    assert grad_a.item() == pytest.approx(68.0)


# -- distillation weighting ------------------------------------------------------------------------------
SCHEDULE = NoiseSchedule.scaled_linear()
T = torch.tensor([20, 500, 980])


def test_exp_weighting_is_alpha_t():
    alpha, sigma = SCHEDULE.alpha(T), SCHEDULE.sigma(T)
    assert torch.equal(Fn.distill_weight("exp", alpha, sigma), alpha)


def test_sds_and_nfsd_weighting():
    alpha, sigma = SCHEDULE.alpha(T), SCHEDULE.sigma(T)
    # w = σ²: α σ² / (2σ) = α σ / 2;  w = 1: α / (2σ)
    torch.testing.assert_close(Fn.distill_weight("sds", alpha, sigma, "sigma2"), alpha * sigma / 2)
    torch.testing.assert_close(Fn.distill_weight("sds", alpha, sigma, "uniform"), alpha / (2 * sigma))
    torch.testing.assert_close(Fn.distill_weight("nfsd", alpha, sigma), Fn.distill_weight("sds", alpha, sigma))
    # a spot value: SD's ᾱ_500 = 0.27639..., so α σ / 2 = sqrt(ᾱ(1 − ᾱ))/2
    ac = SCHEDULE.alphas_cumprod[500]
    assert Fn.distill_weight("sds", alpha, sigma)[1].item() == pytest.approx((ac * (1 - ac)).sqrt().item() / 2)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="exp"):
        Fn.distill_weight("vsd", torch.ones(1), torch.ones(1))


def test_distill_distance_sum_and_mean_and_stop_gradient():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    c = torch.tensor([1.0, 2.0])
    # sum: per sample [5, 2] · c = [5, 4] → 4.5;  mean: [2.5, 1] · c = [2.5, 2] → 2.25
    loss = Fn.distill_distance(x, target, c, "sum")
    assert loss.item() == pytest.approx(4.5)
    assert Fn.distill_distance(x, target, c, "mean").item() == pytest.approx(2.25)
    loss.backward()
    assert target.grad is None  # sg(target)
    # ∂/∂x of mean_b c_b Σ (x − y)² = c_b · 2(x − y) / B
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 2.0], [-2.0, -2.0]]))


# -- ADD appendix A: the distillation gradient equals the SDS gradient in latent space -------------------
def _fake_teacher_eps(x_t: torch.Tensor) -> torch.Tensor:
    """A fixed affine "teacher" with a known ε̂(x_t)."""
    return 0.3 * x_t + 0.1


@pytest.mark.parametrize("t", [50, 500, 950])
@pytest.mark.parametrize("w_kind", ["sigma2", "uniform"])
def test_appendix_a_distill_gradient_is_sds_gradient(t, w_kind):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 3, requires_grad=True)  # the student's x̂_θ (latents), batch 1
    eps = torch.randn_like(x)  # ε'
    tt = torch.tensor([t])
    alpha, sigma = SCHEDULE.coefficients(tt, x)
    x_t = alpha * x.detach() + sigma * eps  # the teacher's input is sg(x̂_{θ,t})
    eps_hat = _fake_teacher_eps(x_t)
    x_psi = Prediction(eps_hat, "epsilon", x_t, alpha, sigma).x0  # x̂_ψ = (x_t − σ ε̂)/α
    c = Fn.distill_weight("sds", alpha, sigma, w_kind)
    Fn.distill_distance(x, x_psi, c, "sum").backward()
    # hand: ∇ = 2c(x − x̂_ψ) = 2 (α w / 2σ)(σ/α)(ε̂ − ε') = w (ε̂ − ε')
    w = Fn.sds_w(sigma, w_kind)
    torch.testing.assert_close(x.grad, w * (eps_hat - eps), rtol=1e-4, atol=1e-5)


def test_exp_weighting_gradient_is_two_sigma_times_eps_error():
    # With c = α: ∇ = 2α(σ/α)(ε̂ − ε') = 2σ(ε̂ − ε').
    torch.manual_seed(1)
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    eps = torch.randn_like(x)
    tt = torch.tensor([300])
    alpha, sigma = SCHEDULE.coefficients(tt, x)
    x_t = alpha * x.detach() + sigma * eps
    eps_hat = _fake_teacher_eps(x_t)
    x_psi = (x_t - sigma * eps_hat) / alpha
    Fn.distill_distance(x, x_psi, Fn.distill_weight("exp", alpha, sigma), "sum").backward()
    torch.testing.assert_close(x.grad, 2 * sigma * (eps_hat - eps), rtol=1e-4, atol=1e-5)


def test_nfsd_target_gives_the_nfsd_gradient_on_both_sides_of_t_200():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 2, 2, requires_grad=True)
    eps_c, eps_u, eps_n = torch.randn(3, *x.shape).unbind(0)
    t = torch.tensor([100, 600])  # sample 0 below the 200 switch, sample 1 above
    alpha, sigma = SCHEDULE.coefficients(t, x)
    g = Fn.nfsd_direction(eps_c, eps_u, eps_n, t, scale=7.5)
    target = Fn.nfsd_target(x, g, alpha, sigma)
    c = Fn.distill_weight("nfsd", alpha, sigma)
    Fn.distill_distance(x, target, c, "sum").backward()
    # hand: δ_C = ε_c − ε_u; δ_D = ε_u (t < 200) or ε_u − ε_n; ∇ per sample = w(δ_D + 7.5 δ_C) / B
    w = sigma.pow(2)
    expected = torch.stack([
        w[0] * (eps_u[0] + 7.5 * (eps_c[0] - eps_u[0])),
        w[1] * ((eps_u[1] - eps_n[1]) + 7.5 * (eps_c[1] - eps_u[1])),
    ]) / 2
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-5)
