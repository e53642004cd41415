"""core.denoising (what ``distillkit teach`` trains with) against hand-derived values."""

from __future__ import annotations

import pytest
import torch

from distillkit.losses.base import Phase, StepContext
from distillkit.roles.student import Student
from distillkit.toy.backbone import ToyExactBackbone
from distillkit.toy.denoising import Denoising


class ZeroNet(torch.nn.Module):
    """Predicts ε̂ = 0 whatever the input; records the conditioning it was called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        self.seen.append(encoder_hidden_states.detach().clone())
        return (sample * self.w,)


def _ctx(backbone, net, n=256, seed=0):
    world = backbone.world
    prompts = world.balanced_prompts(n // len(world.prompts))
    x0, _ = world.sample(prompts, torch.Generator().manual_seed(seed))
    return StepContext(phase=Phase.GENERATOR, step=0, backbone=backbone, teacher=None,
                       student=Student(backbone, net, [999]), prompts=prompts,
                       cond=backbone.encode_prompts(prompts, 8), uncond=backbone.empty_conditioning(n, 8),
                       resolution=8, sample=lambda: pytest.fail("the loss must not read the student's sample"),
                       real_x0=x0.float(), generator=torch.Generator().manual_seed(seed + 1))


def test_epsilon_target(toy_eps_folder):
    """A network that predicts 0 scores E ε² = 1. The exact posterior's ε scores the Bayes error: once
    the component is known, per pixel ᾱs²/(ᾱs² + 1 − ᾱ) (the noise x_t cannot reveal), averaged over
    t ~ U{0..999} — plus a little where the component itself is uncertain."""
    b = ToyExactBackbone.from_pretrained(toy_eps_folder)
    assert b.prediction_type == "epsilon"
    zero = Denoising(Denoising.Config(prompt_dropout=0.0)).generator_loss(_ctx(b, ZeroNet(), n=1024)).total
    assert float(zero.detach()) == pytest.approx(1.0, abs=0.02)
    ac, s2 = b.schedule.alphas_cumprod, float(b.world.stds[0]) ** 2
    bayes = float((ac * s2 / (ac * s2 + 1 - ac)).mean())  # 0.0155 for s = 0.06 and SD's schedule
    best = Denoising(Denoising.Config(prompt_dropout=0.0)).generator_loss(_ctx(b, b.exact, n=1024)).total
    assert 0.7 * bayes < float(best) < bayes + 0.01


def test_v_target(toy_folder):
    """v̂ − v = −(x̂0 − x0)/σ, so the exact posterior's v scores at least E_t[s²/(ᾱs² + 1 − ᾱ)] per pixel
    (the within-component part; at high t the component is uncertain too, and /σ does not shrink that
    part as ε's α/σ does). A network that predicts 0 scores E v² = ᾱ + (1 − ᾱ) E x0², far above it."""
    b = ToyExactBackbone.from_pretrained(toy_folder)
    assert b.prediction_type == "v_prediction"
    ac, s2 = b.schedule.alphas_cumprod, float(b.world.stds[0]) ** 2
    bayes = float((s2 / (ac * s2 + 1 - ac)).mean())
    best = Denoising(Denoising.Config(prompt_dropout=0.0)).generator_loss(_ctx(b, b.exact, n=1024)).total
    assert 0.9 * bayes < float(best.detach()) < 3 * bayes
    zero = Denoising(Denoising.Config(prompt_dropout=0.0)).generator_loss(_ctx(b, ZeroNet(), n=1024)).total
    assert float(zero.detach()) > 10 * bayes


def test_prompt_dropout_uses_the_empty_prompt(toy_folder):
    b = ToyExactBackbone.from_pretrained(toy_folder)
    for p, expect_empty in ((1.0, True), (0.0, False)):
        net = ZeroNet()
        Denoising(Denoising.Config(prompt_dropout=p)).generator_loss(_ctx(b, net))
        emb = net.seen[-1]
        assert bool((emb.abs().sum(dim=(1, 2)) == 0).all()) is expect_empty


def test_gradient_reaches_the_trained_network(toy_folder):
    b = ToyExactBackbone.from_pretrained(toy_folder)
    net = ZeroNet()
    Denoising().generator_loss(_ctx(b, net)).total.backward()
    assert net.w.grad is not None and float(net.w.grad.abs()) > 0


def test_config_checks_the_range():
    with pytest.raises(ValueError, match="t_min"):
        Denoising.Config(t_min=500, t_max=100)
