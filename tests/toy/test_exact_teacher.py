"""The exact teacher against a Monte-Carlo estimate of the posterior mean, and exact CFG against its definition."""

from __future__ import annotations

import pytest
import torch

from distillkit.diffusion import NoiseSchedule
from distillkit.roles.teacher import Teacher
from distillkit.toy.exact import ExactDenoiser
from distillkit.toy.world import Component, build_world

SCHEDULE = NoiseSchedule.scaled_linear()


@pytest.fixture(scope="module")
def small_world():
    """4×4 images, two prompts with unequal shares, components wide enough that x_t leaves the posterior
    over components uncertain (the regime where a wrong responsibility formula shows)."""
    comps = [Component("a red circle", "circle", (0.7, -0.5, -0.5), (1.5, 1.5), 1.2, 0.7, 0.3),
             Component("a red circle", "circle", (0.7, -0.5, -0.5), (2.5, 2.5), 1.0, 0.3, 0.2),
             Component("a blue square", "square", (-0.5, -0.4, 0.7), (2.0, 2.0), 1.0, 1.0, 0.25)]
    world = build_world(comps, resolution=4)
    world.prompt_weights = torch.tensor([0.8, 0.2], dtype=torch.float64)  # unequal: the empty prompt must use it
    return world


_PRIOR_SAMPLES: dict = {}
#: the fixture's prompt shares, written out again so the reference does not read them from the code under test
SHARES = {"a red circle": 0.8, "a blue square": 0.2}


def _prior_sample(world, prompt, n: int, g) -> torch.Tensor:
    """x0 of ``prompt`` drawn from the component table directly (not through ``World.sample``); the empty
    prompt stratified by :data:`SHARES`."""
    if prompt is None:
        return torch.cat([_prior_sample(world, p, round(n * share), g) for p, share in SHARES.items()])
    comps = [k for k, c in enumerate(world.components) if c.prompt == prompt]
    weights = torch.tensor([world.components[k].weight for k in comps], dtype=torch.float64)
    pick = torch.tensor(comps)[torch.multinomial(weights, n, replacement=True, generator=g)]
    std = torch.tensor([c.std for c in world.components], dtype=torch.float64)[pick]
    noise = torch.randn((n, *world.image_shape), generator=g, dtype=torch.float64)
    return world.means[pick] + std.view(-1, 1, 1, 1) * noise


def _mc_posterior_mean(world, prompt, x_t, t, n=150_000):
    """Self-normalised importance sampling with the prior as proposal: Σ x0_i p(x_t | x0_i) / Σ p(x_t | x0_i)."""
    if prompt not in _PRIOR_SAMPLES:  # one prior sample per prompt, shared by the timesteps
        _PRIOR_SAMPLES[prompt] = _prior_sample(world, prompt, n, torch.Generator().manual_seed(0))
    x0 = _PRIOR_SAMPLES[prompt]
    ac = SCHEDULE.alphas_cumprod[t]
    alpha, sigma2 = ac.sqrt(), 1 - ac
    logw = -0.5 * ((x_t.double() - alpha * x0) ** 2).flatten(1).sum(1) / sigma2
    w = torch.softmax(logw, 0)
    est = (w[:, None] * x0.flatten(1)).sum(0)
    ess = float(1 / (w**2).sum())
    # standard error of a self-normalised estimate: sqrt(Σ w_i² (x_i − est)²)
    se = ((w[:, None] ** 2) * (x0.flatten(1) - est) ** 2).sum(0).sqrt()
    return est.reshape(x_t.shape), se.reshape(x_t.shape), ess


@pytest.mark.parametrize("t", [999, 700, 450])
@pytest.mark.parametrize("prompt", ["a red circle", None])
def test_posterior_mean_matches_monte_carlo(small_world, prompt, t):
    exact = ExactDenoiser(small_world, SCHEDULE)
    g = torch.Generator().manual_seed(t)
    # an x_t from the model itself, so the posterior is where the test says it is
    x0, _ = small_world.sample([prompt or "a red circle"], g)
    x_t = SCHEDULE.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), torch.tensor([t]))[0]
    mc, se, ess = _mc_posterior_mean(small_world, prompt, x_t, t)
    assert ess > 200, "the Monte-Carlo estimate is too degenerate to test anything"
    row = 0 if prompt else len(small_world.prompts)
    got = exact.posterior(x_t[None], torch.tensor([t]), torch.tensor([row]))[0].reshape(x_t.shape)
    assert torch.all((got - mc).abs() <= 5 * se + 1e-4), float(((got - mc).abs() / se).max())
    # and the estimate is informative: the posterior mean is not the prior mean
    prior_mean = small_world.moments(prompt)[0].reshape(x_t.shape)
    assert float((got - prior_mean).abs().max()) > 10 * float(se.max())


def test_forward_returns_epsilon_of_the_posterior_mean(small_world):
    exact = ExactDenoiser(small_world, SCHEDULE)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([300, 800])
    cond = small_world.embeddings[[0, 1]]
    eps = exact(x_t, t, encoder_hidden_states=cond, return_dict=False)[0]
    x0 = exact.x0(x_t, t, cond)
    a, s = SCHEDULE.coefficients(t, x_t)
    assert torch.allclose(a * x0 + s * eps, x_t, atol=1e-5)  # x_t = α x̂0 + σ ε̂


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_every_parameterisation_carries_the_same_posterior_mean(small_world, kind):
    from distillkit.diffusion import Prediction

    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([100, 900])
    cond = small_world.embeddings[[0, 1]].double()
    exact = ExactDenoiser(small_world, SCHEDULE, kind)
    a, s = SCHEDULE.coefficients(t, x_t)
    x0 = Prediction(exact(x_t, t, encoder_hidden_states=cond, return_dict=False)[0], kind, x_t, a, s).x0
    assert torch.allclose(x0, exact.x0(x_t, t, cond), atol=1e-10)
    if kind == "v_prediction":  # v = α ε − σ x0 with ε = (x_t − α x0)/σ, written out
        eps = (x_t - a * x0) / s
        assert torch.allclose(exact(x_t, t, encoder_hidden_states=cond, return_dict=False)[0], a * eps - s * x0)


def test_prompts_are_read_from_the_conditioning(small_world):
    exact = ExactDenoiser(small_world, SCHEDULE)
    cond = torch.cat([small_world.embeddings[[1, 0]], torch.zeros(1, 1, small_world.embeddings.shape[-1])])
    assert exact.prompt_rows(cond).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="matches no prompt"):
        exact.prompt_rows(small_world.embeddings[[0]] * 0.5)


def test_exact_cfg_is_the_guided_combination_of_the_exact_branches(small_world):
    """ε̂ = ε_u + s (ε_c − ε_u) with ε_c the prompt's posterior and ε_u the empty prompt's (prompt shares)."""
    from types import SimpleNamespace

    exact = ExactDenoiser(small_world, SCHEDULE)
    backbone = SimpleNamespace(schedule=SCHEDULE, prediction_type="epsilon")
    from distillkit.diffusion import Prediction

    def denoise(unet, x, t, c):
        a, s = SCHEDULE.coefficients(t, x)
        return Prediction(unet(x, t, encoder_hidden_states=c.embeds, return_dict=False)[0], "epsilon", x, a, s)

    backbone.denoise = denoise
    from distillkit.models.conditioning import Conditioning

    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([900, 600, 400])
    cond = Conditioning(small_world.embeddings[[0, 1, 0]].double())
    uncond = Conditioning(torch.zeros(1, 1, small_world.embeddings.shape[-1], dtype=torch.float64))
    eps_c = exact(x_t, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]
    eps_u = exact(x_t, t, encoder_hidden_states=uncond.embeds.expand(3, -1, -1), return_dict=False)[0]
    assert float((eps_c - eps_u).abs().max()) > 0.05  # the branches differ, so a swap would show
    teacher = Teacher(backbone, exact, guidance_scale=3.0)
    got = teacher.predict(x_t, t, cond, uncond).output
    assert torch.allclose(got, eps_u + 3.0 * (eps_c - eps_u), atol=1e-10)
    assert torch.allclose(teacher.predict(x_t, t, cond, uncond, scale=1.0).output, eps_c, atol=1e-12)
    assert torch.allclose(teacher.predict(x_t, t, cond, uncond, scale=0.0).output, eps_u, atol=1e-12)


def test_gradient_flows_through_the_exact_teacher_input(small_world):
    """SiD-style losses differentiate through the teacher's input: the closed form keeps the graph."""
    exact = ExactDenoiser(small_world, SCHEDULE)
    x_t = torch.randn(1, 3, 4, 4, requires_grad=True)
    x0 = exact.x0(x_t, torch.tensor([500]), small_world.embeddings[[0]])
    x0.sum().backward()
    assert x_t.grad is not None and float(x_t.grad.abs().sum()) > 0
    assert all(p.grad is None for p in exact.parameters())
