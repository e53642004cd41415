"""The roles against direct UNet calls and hand-written expectations: the teacher's CFG branches, the
student's timestep subsets, first input, re-noising, and the few-step index shared by all processes."""

from __future__ import annotations

import pytest
import torch

from distillkit import Student, Teacher
from distillkit.roles.student import subset_timesteps


def unet_eps(backbone, x, t, cond):
    """A direct diffusers call, bypassing distillkit's Teacher and Backbone.denoise."""
    return backbone.teacher_unet(x, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, -1.5])
def test_teacher_predict_is_cfg_of_direct_unet_calls(tiny_sd15, scale):
    b = tiny_sd15
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700, 300])
    cond, uncond = b.encode_prompts(["a red circle", "a blue square"], 64), b.empty_conditioning(2, 64)
    with torch.no_grad():
        got = Teacher(b, b.teacher_unet, 7.0).predict(x, t, cond, uncond, scale=scale).output
        e_c, e_u = unet_eps(b, x, t, cond), unet_eps(b, x, t, uncond)
    # diffusers' convention: uncond + s (cond − uncond); a cond/uncond swap gives cond + s (uncond − cond)
    torch.testing.assert_close(got, e_u + scale * (e_c - e_u), rtol=1e-5, atol=1e-5)
    swapped = e_c + scale * (e_u - e_c)  # equal to the right answer only at scale 0.5, not tested here
    assert not torch.allclose(got, swapped, atol=1e-4)


def test_teacher_default_scale_and_x0_conversion(tiny_sd15):
    b = tiny_sd15
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    cond, uncond = b.encode_prompts(["a"], 64), b.empty_conditioning(1, 64)
    with torch.no_grad():
        pred = Teacher(b, b.teacher_unet, 2.5).predict(x, t, cond, uncond)
        eps = unet_eps(b, x, t, uncond) + 2.5 * (unet_eps(b, x, t, cond) - unet_eps(b, x, t, uncond))
    a, s = b.schedule.alpha(t).item(), b.schedule.sigma(t).item()
    torch.testing.assert_close(pred.x0, (x - s * eps) / a, rtol=1e-4, atol=1e-4)


def test_subset_timesteps_are_every_k_th_by_index_from_the_noisiest():
    ts = [999, 749, 499, 249]
    assert subset_timesteps(ts, 1) == [999]
    assert subset_timesteps(ts, 2) == [999, 499]
    assert subset_timesteps(ts, 3) == [999, 749, 499]  # floor(i·N/k), as diffusers' LCMScheduler
    assert subset_timesteps(ts, 4) == ts
    with pytest.raises(ValueError):
        subset_timesteps(ts, 5)


class Recording(torch.nn.Module):
    """Stands in for a UNet: records its inputs, predicts ε = 0 (so x0 = x_t / α_t)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.config = inner.config

    def forward(self, x, t, **kw):
        self.calls.append((x.detach().clone(), t.clone()))
        return (torch.zeros_like(x),)


def test_sigma_noise_first_input_and_fixed_renoise(tiny_sd15):
    b = tiny_sd15
    rec = Recording(b.teacher_unet)
    student = Student(b, rec, [625, 312], first_input="sigma_noise", renoise="fixed")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = b.encode_prompts(["a"], 64)
    student.sample(noise, cond, 2, generator=torch.Generator().manual_seed(3))
    (x1, t1), (x2, t2) = rec.calls
    assert t1.tolist() == [625] and t2.tolist() == [312]
    torch.testing.assert_close(x1, b.schedule.sigma(torch.tensor(625)).item() * noise)
    x0 = x1 / b.schedule.alpha(torch.tensor(625)).item()  # ε = 0 ⇒ x0 = x_t/α
    a2, s2 = b.schedule.alpha(torch.tensor(312)).item(), b.schedule.sigma(torch.tensor(312)).item()
    torch.testing.assert_close(x2, a2 * x0 + s2 * noise, rtol=1e-5, atol=1e-5)  # the *first* noise again


def test_fresh_renoise_draws_new_noise(tiny_sd15):
    b = tiny_sd15
    rec = Recording(b.teacher_unet)
    student = Student(b, rec, [999, 499], renoise="fresh")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    student.sample(noise, b.encode_prompts(["a"], 64), 2, generator=torch.Generator().manual_seed(3))
    (x1, _), (x2, _) = rec.calls
    torch.testing.assert_close(x1, noise)  # first input "noise": ε itself at t = 999
    a2, s2 = b.schedule.alpha(torch.tensor(499)).item(), b.schedule.sigma(torch.tensor(499)).item()
    x0 = x1 / b.schedule.alpha(torch.tensor(999)).item()
    fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x2, a2 * x0 + s2 * fresh, rtol=1e-5, atol=1e-5)


def test_few_step_index_comes_from_the_shared_generator_only(tiny_sd15):
    """Two processes (different per-rank generators, one shared generator) train on the same step k."""
    b = tiny_sd15
    student = Student.build(b, [999, 749, 499, 249])
    cond = b.encode_prompts(["a", "b"], 64)
    ks = set()
    for rank in range(2):
        with torch.no_grad():
            s = student.training_sample("noise", cond, (2, 4, 8, 8), torch.Generator().manual_seed(100 + rank),
                                        shared_generator=torch.Generator().manual_seed(7))
        ks.add(int(s.t[0]))
    assert len(ks) == 1
    drawn = {int(student.training_sample("noise", cond, (2, 4, 8, 8), torch.Generator().manual_seed(1),
                                         shared_generator=torch.Generator().manual_seed(seed)).t[0])
             for seed in range(12)}
    assert len(drawn) > 1, "k must actually vary with the shared draw"


def test_only_the_last_few_step_step_carries_the_graph(tiny_sd15):
    b = tiny_sd15
    student = Student.build(b, [999, 499])
    cond = b.encode_prompts(["a"], 64)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = student.run_steps(noise, cond, [999, 499], torch.Generator().manual_seed(1), grad_last=True)
    assert out.x0.requires_grad and not out.input.requires_grad  # the step-2 input is detached
    grads = torch.autograd.grad(out.x0.sum(), student.trainable_parameters(), allow_unused=True)
    assert any(g is not None for g in grads)
