"""The shared diffusion maths (docs/methods.md, notation) against values derived by hand, and conditioning batching."""

from __future__ import annotations

import itertools
import math
import types

import pytest
import torch

from distillkit.diffusion import NoiseSchedule, Prediction, cfg_combine, convert, guided
from distillkit.models.conditioning import Conditioning

KINDS = ("epsilon", "v_prediction", "sample")


@pytest.fixture(scope="module")
def sd():
    return NoiseSchedule.scaled_linear()


# -- schedule -------------------------------------------------------------------------------------------


def test_scaled_linear_endpoints(sd):
    assert sd.num_train_timesteps == 1000
    assert sd.alphas_cumprod.dtype == torch.float64
    assert sd.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, abs=1e-15)  # ᾱ_0 = 1 − β_0
    assert sd.alphas_cumprod[-1].item() == pytest.approx(0.00466, abs=5e-6)  # docs/methods.md: not zero
    assert torch.all(sd.alphas_cumprod[1:] < sd.alphas_cumprod[:-1])


def test_linear_endpoint():
    assert NoiseSchedule.linear().alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)


def test_alpha_sigma_snr(sd):
    t = torch.arange(1000)
    a, s = sd.alpha(t), sd.sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(1000, dtype=torch.float64))
    assert sd.snr(0).item() == pytest.approx(0.99915 / 0.00085, rel=1e-12)  # = 1175.47
    torch.testing.assert_close(sd.snr(t), a**2 / s**2)


def test_add_noise_by_hand():
    s = NoiseSchedule(torch.tensor([0.64, 0.36, 0.01]))  # (α, σ) = (0.8, 0.6) at t=0, (0.6, 0.8) at t=1
    x0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    eps = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    x_t = s.add_noise(x0, eps, torch.tensor([0, 1]))
    # row 0: 0.8·[1, 2] + 0.6·[1, −1] = [1.4, 1.0];  row 1: 0.6·[3, 4] + 0.8·[0.5, 0] = [2.2, 2.4]
    torch.testing.assert_close(x_t, torch.tensor([[1.4, 1.0], [2.2, 2.4]]))
    assert x_t.dtype == torch.float32


def test_coefficients_broadcast_shape_and_dtype(sd):
    like = torch.zeros(3, 4, 8, 8, dtype=torch.float16)
    a, s = sd.coefficients(torch.tensor([0, 500, 999]), like)
    assert a.shape == s.shape == (3, 1, 1, 1) and a.dtype == torch.float16
    assert a[2].item() == pytest.approx(math.sqrt(0.00466), rel=2e-3)


def test_edm_sigma_of_sid_init_timestep(sd):
    assert sd.edm_sigma(625).item() == pytest.approx(2.5017, abs=1e-4)  # docs/methods.md: SiD's t_init
    assert sd.timestep_for_edm_sigma(2.5) == 625
    assert sd.timestep_for_edm_sigma(1e-6) == 0 and sd.timestep_for_edm_sigma(1e6) == 999


def test_zero_terminal_snr_by_hand():
    s = NoiseSchedule(torch.tensor([0.81, 0.25, 0.01]))  # sqrt: [0.9, 0.5, 0.1]
    z = s.rescale_zero_terminal_snr()
    # (sqrt ᾱ − 0.1) · 0.9 / 0.8 = [0.9, 0.45, 0]  ⇒  ᾱ = [0.81, 0.2025, 0]
    torch.testing.assert_close(z.alphas_cumprod, torch.tensor([0.81, 0.2025, 0.0], dtype=torch.float64))


def test_zero_terminal_snr_on_sd(sd):
    z = sd.rescale_zero_terminal_snr()
    assert z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(sd.alphas_cumprod[0].item(), abs=1e-15)
    assert torch.all(z.alphas_cumprod[1:] < z.alphas_cumprod[:-1])
    assert z.sigma(999).item() == 1.0  # the last student input is pure noise


def test_sample_timesteps_inclusive_and_seeded(sd):
    draws = sd.sample_timesteps(2000, 3, 5, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 4, 5} and not draws.is_floating_point()
    full = sd.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert full.min().item() == 0 and full.max().item() == 999
    again = sd.sample_timesteps(2000, 3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert sd.sample_timesteps(1, 7, 7).item() == 7


@pytest.mark.parametrize("low, high", [(5, 4), (-1, 10), (0, 1000)])
def test_sample_timesteps_rejects_bad_bounds(sd, low, high):
    with pytest.raises(ValueError, match="need 0 <= low <= high < 1000"):
        sd.sample_timesteps(4, low, high)


@pytest.mark.parametrize("t", [1000, -1, torch.tensor([0, 1000])])
def test_out_of_range_timesteps_rejected(sd, t):
    with pytest.raises(IndexError, match=r"out of range \[0, 999\]"):
        sd.alpha(t)


def test_float_timesteps_rejected(sd):
    with pytest.raises(TypeError, match="integer indices"):
        sd.sigma(torch.tensor([500.0]))
    with pytest.raises(TypeError):
        sd.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), 0.5)


@pytest.mark.parametrize("values", [[0.5], [1.2, 0.5], [0.5, -0.1]])
def test_schedule_validates_values(values):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        NoiseSchedule(torch.tensor(values))


def test_from_scheduler():
    scheduler = types.SimpleNamespace(alphas_cumprod=torch.tensor([0.9, 0.5], dtype=torch.float32))
    s = NoiseSchedule.from_scheduler(scheduler)
    assert s.alphas_cumprod.dtype == torch.float64 and s.num_train_timesteps == 2

    class FlowScheduler:
        pass

    with pytest.raises(ValueError, match="FlowScheduler has no alphas_cumprod"):
        NoiseSchedule.from_scheduler(FlowScheduler())


# -- parameterisations -------------------------------------------------------------------------------

# α = 0.6, σ = 0.8, x_t = 1, ε = 0.5:  x0 = (1 − 0.8·0.5)/0.6 = 1,  v = 0.6·0.5 − 0.8·1 = −0.5
HAND = {"epsilon": 0.5, "sample": 1.0, "v_prediction": -0.5}


@pytest.mark.parametrize("source, target", list(itertools.product(KINDS, KINDS)))
def test_convert_matches_hand_values(source, target):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = convert(t(HAND[source]), source, target, x_t=t(1.0), alpha=t(0.6), sigma=t(0.8))
    assert out.item() == pytest.approx(HAND[target], abs=1e-12)


@pytest.mark.parametrize("source, target", list(itertools.product(KINDS, KINDS)))
def test_convert_round_trips(source, target):
    g = torch.Generator().manual_seed(1)
    alpha = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.95 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x_t, out = torch.randn(2, 64, 3, generator=g, dtype=torch.float64)
    back = convert(convert(out, source, target, x_t, alpha, sigma), target, source, x_t, alpha, sigma)
    torch.testing.assert_close(back, out)


def test_convert_is_consistent_with_noising():
    g = torch.Generator().manual_seed(2)
    alpha = torch.rand(16, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x0, eps = torch.randn(2, 16, 4, generator=g, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    torch.testing.assert_close(convert(eps, "epsilon", "sample", x_t, alpha, sigma), x0)
    torch.testing.assert_close(convert(x0, "sample", "v_prediction", x_t, alpha, sigma), alpha * eps - sigma * x0)


def test_convert_rejects_unknown_kind():
    z = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown prediction type 'flow'"):
        convert(z, "flow", "sample", z, z + 1, z)
    with pytest.raises(ValueError, match="unknown prediction type 'x0'"):
        convert(z, "sample", "x0", z, z + 1, z)


def test_prediction_properties():
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    p = Prediction(t(0.5), "epsilon", t(1.0), t(0.6), t(0.8))
    assert p.x0.item() == pytest.approx(1.0) and p.v.item() == pytest.approx(-0.5)
    assert p.eps is p.output  # its own parameterisation is returned as is
    q = p.with_output(t(-0.5))
    assert (q.kind, q.x_t, q.alpha, q.sigma) == (p.kind, p.x_t, p.alpha, p.sigma)
    pv = Prediction(t(-0.5), "v_prediction", t(1.0), t(0.6), t(0.8))
    assert pv.eps.item() == pytest.approx(0.5) and pv.x0.item() == pytest.approx(1.0)


# -- guidance ------------------------------------------------------------------------------------------


class Recorder:
    """call(x, t, cond) = cond.embeds · x + t per sample; remembers each call's batch size."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        return cond.embeds.reshape(-1, 1) * x + t.reshape(-1, 1).to(x.dtype)


def _cond(value, batch=1):
    return Conditioning(torch.full((batch, 1, 1), float(value)))


X = torch.tensor([[1.0, 2.0]])
T = torch.tensor([10])
# conditional branch 3x + t = [13, 16]; unconditional x + t = [11, 12]


@pytest.mark.parametrize("scale, expected, batches", [
    (1.0, [13.0, 16.0], [1]),  # conditional only, one call of batch B
    (0.0, [11.0, 12.0], [1]),  # unconditional only
    (7.5, [26.0, 42.0], [2]),  # u + 7.5(c − u) = x + t + 15x; one call of batch 2B
    (-1.0, [9.0, 8.0], [2]),  # 2u − c = −x + t (anti-CFG)
])
def test_guided_by_hand(scale, expected, batches):
    rec = Recorder()
    out = guided(rec, X, T, _cond(3), _cond(1), scale)
    torch.testing.assert_close(out, torch.tensor([expected]))
    assert rec.batches == batches


def test_guided_scale_one_does_not_need_uncond():
    torch.testing.assert_close(guided(Recorder(), X, T, _cond(3), None, 1), torch.tensor([[13.0, 16.0]]))
    with pytest.raises(ValueError, match="guidance scale 7.5 needs an unconditional branch"):
        guided(Recorder(), X, T, _cond(3), None, 7.5)


def test_guided_keeps_samples_apart():
    x = torch.tensor([[1.0], [2.0]])
    cond = Conditioning(torch.tensor([3.0, 5.0]).reshape(2, 1, 1))
    out = guided(Recorder(), x, torch.tensor([0, 100]), cond, _cond(1, 2), 2.0)
    # sample i: u + 2(c − u) = 2c − u = 2(k_i x + t) − (x + t) = (2 k_i − 1) x + t
    torch.testing.assert_close(out, torch.tensor([[5.0], [118.0]]))


def test_cfg_combine_by_hand():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 7.5).item() == 8.5
    assert cfg_combine(c, u, -1.0).item() == 0.0  # 2u − c


def test_cfg_commutes_with_parameterisation():
    """docs/methods.md: the CFG weights sum to 1 and ε, v, x0 are affine at fixed x_t, so guiding any gives one x0."""
    g = torch.Generator().manual_seed(3)
    alpha = torch.rand(8, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x_t, eps_c, eps_u = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    s = 4.5
    x0_of_guided_eps = convert(cfg_combine(eps_c, eps_u, s), "epsilon", "sample", x_t, alpha, sigma)
    for kind in ("sample", "v_prediction"):
        c, u = (convert(e, "epsilon", kind, x_t, alpha, sigma) for e in (eps_c, eps_u))
        torch.testing.assert_close(convert(cfg_combine(c, u, s), kind, "sample", x_t, alpha, sigma), x0_of_guided_eps)


# -- conditioning --------------------------------------------------------------------------------------


def _sdxl(values):
    n = len(values)
    v = torch.tensor(values, dtype=torch.float32)
    return Conditioning(v.reshape(n, 1, 1).expand(n, 2, 3).clone(), pooled=v.reshape(n, 1).repeat(1, 4),
                        time_ids=torch.arange(6).repeat(n, 1) + 100 * torch.arange(n).reshape(n, 1))


def test_cat_concatenates_every_field():
    c = Conditioning.cat([_sdxl([1, 2]), _sdxl([3])])
    assert c.batch_size == 3 and c.pooled.shape == (3, 4) and c.time_ids.shape == (3, 6)
    assert c.embeds[:, 0, 0].tolist() == [1, 2, 3] and c.time_ids[:, 0].tolist() == [0, 100, 0]
    plain = Conditioning.cat([Conditioning(torch.zeros(1, 2, 3)), Conditioning(torch.ones(2, 2, 3))])
    assert plain.batch_size == 3 and plain.pooled is None and plain.time_ids is None


def test_cat_refuses_mixed_families():
    with pytest.raises(ValueError, match="field 'pooled' missing in some items"):
        Conditioning.cat([_sdxl([1]), Conditioning(torch.zeros(1, 2, 3))])


def test_index_repeat_expand():
    c = _sdxl([1, 2, 3])
    assert c[1:].embeds[:, 0, 0].tolist() == [2, 3] and c[1:].pooled.shape == (2, 4)
    assert c[torch.tensor([True, False, True])].time_ids[:, 0].tolist() == [0, 200]
    assert c[:2].repeat(2).embeds[:, 0, 0].tolist() == [1, 1, 2, 2]  # a, a, b, b
    one = _sdxl([7])
    e = one.expand(3)
    assert e.batch_size == 3 and e.pooled.shape == (3, 4) and e.embeds[:, 0, 0].tolist() == [7, 7, 7]
    assert c.expand(3) is c
    with pytest.raises(ValueError, match="can only expand a batch-1 conditioning, got batch 3"):
        c.expand(6)


def test_where_swaps_masked_samples():
    c, empty = _sdxl([1, 2, 3]), _sdxl([9])
    out = c.where(torch.tensor([True, False, True]), empty)
    assert out.embeds[:, 0, 0].tolist() == [9, 2, 9] and out.pooled[:, 0].tolist() == [9, 2, 9]
    assert out.time_ids[:, 0].tolist() == [0, 100, 0]
    plain = Conditioning(torch.zeros(2, 1, 1)).where(torch.tensor([True, False]), Conditioning(torch.ones(1, 1, 1)))
    assert plain.embeds.flatten().tolist() == [1, 0] and plain.pooled is None


def test_to_dtype_applies_to_float_fields_only():
    c = _sdxl([1, 2]).to(torch.float16)
    assert c.embeds.dtype == c.pooled.dtype == torch.float16
    assert c.time_ids.dtype == torch.int64  # the docstring's promise: time_ids stay exact
    d = _sdxl([1]).detach().to("cpu", dtype=torch.bfloat16)
    assert d.embeds.dtype == torch.bfloat16 and d.time_ids.dtype == torch.int64
