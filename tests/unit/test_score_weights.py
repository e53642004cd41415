"""The score-distillation weightings and the NFSD combination shared by ADD and the SDS plugin, against values
worked out by hand (a swapped weighting, α where α² belongs, or the NFSD switch on the wrong side of t = 200 fails)."""

import math

import pytest
import torch

from distillkit.diffusion import NoiseSchedule
from distillkit.diffusion.score_weights import NFSD_NEGATIVE_PROMPT, nfsd_direction, score_weight


def test_weightings_at_a_timestep_of_sds_schedule():
    t = 500
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    abar = math.prod(1 - b for b in betas[: t + 1])  # ᾱ_500 of the scaled-linear schedule, from its definition
    schedule = NoiseSchedule.scaled_linear()
    alpha, sigma = schedule.alpha(torch.tensor([t])), schedule.sigma(torch.tensor([t]))
    assert score_weight("sds", sigma).item() == pytest.approx(1 - abar, rel=1e-9)
    assert score_weight("uniform", sigma).item() == 1.0
    assert score_weight("fantasia3d", sigma, alpha).item() == pytest.approx(math.sqrt(abar) * (1 - abar), rel=1e-9)
    with pytest.raises(ValueError, match="needs α_t"):
        score_weight("fantasia3d", sigma)
    with pytest.raises(ValueError, match="expected one of"):
        score_weight("sigma2", sigma)


def test_nfsd_combination_switches_at_t_200():
    eps_c, eps_u, eps_n = torch.full((3, 1), 1.0), torch.full((3, 1), 0.4), torch.full((3, 1), 0.1)
    out = nfsd_direction(eps_c, eps_u, eps_n, torch.tensor([0, 199, 200]), scale=7.5)
    # δ_C = 0.6; below 200 δ_D = ε(∅) = 0.4 → 0.4 + 4.5; from 200 on δ_D = 0.4 − 0.1 → 0.3 + 4.5
    torch.testing.assert_close(out, torch.tensor([[4.9], [4.9], [4.8]]))
    assert NFSD_NEGATIVE_PROMPT.startswith("unrealistic, blurry") and NFSD_NEGATIVE_PROMPT.endswith("gloomy")
