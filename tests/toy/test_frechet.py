"""The Fréchet distance against Gaussians whose distance is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distillkit.metrics.frechet import frechet_distance, frechet_to_reference, gaussian_stats


def test_identical_gaussians_are_at_distance_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    mean = torch.randn(6, generator=g, dtype=torch.float64)
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)


def test_isotropic_gaussians():
    # ||δ||² + D (a − b)² for N(0, a² I) and N(δ, b² I)
    d, a, b = 5, 0.5, 2.0
    delta = torch.arange(d, dtype=torch.float64)
    fd = frechet_distance(torch.zeros(d), a**2 * torch.eye(d), delta, b**2 * torch.eye(d))
    assert fd == pytest.approx(float(delta @ delta) + d * (a - b) ** 2, rel=1e-12)


def test_diagonal_gaussians():
    # commuting covariances: Σ_i (√a_i − √b_i)²
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 9.0, 1.0], dtype=torch.float64)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum())  # 1 + 1 + 0 + 0.25
    assert expected == pytest.approx(2.25)
    assert frechet_distance(torch.zeros(4), torch.diag(a), torch.zeros(4), torch.diag(b)) == pytest.approx(expected)


def test_non_commuting_covariances():
    # Σ1 = I, Σ2 = [[2, 1], [1, 2]] (eigenvalues 3 and 1): tr Σ1 + tr Σ2 − 2 (√3 + 1) = 4 − 2√3
    fd = frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    assert fd == pytest.approx(4 - 2 * math.sqrt(3), rel=1e-10)
    # a rotated pair is not simultaneously diagonal; the distance is rotation invariant
    r = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64)
    c1 = r @ torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)) @ r.T
    c2 = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
    rotated = frechet_distance(torch.zeros(2), r.T @ c1 @ r, torch.zeros(2), r.T @ c2 @ r)
    assert frechet_distance(torch.zeros(2), c1, torch.zeros(2), c2) == pytest.approx(rotated, rel=1e-10)


def test_singular_covariance():
    # Σ1 = diag(1, 0): Σ1^½ Σ2 Σ1^½ = diag(a, 0), so FD = 1 + a + b − 2√a for Σ2 = [[a, c], [c, b]]
    a, b, c = 3.0, 2.0, 0.7
    fd = frechet_distance(torch.zeros(2), torch.diag(torch.tensor([1.0, 0.0])), torch.zeros(2),
                          torch.tensor([[a, c], [c, b]]))
    assert fd == pytest.approx(1 + a + b - 2 * math.sqrt(a), rel=1e-10)


def test_sample_statistics_converge_to_the_truth():
    # unbiased covariance; a large sample of N(μ, Σ) is close to N(μ, Σ), a shifted one is ||δ||² away
    g = torch.Generator().manual_seed(1)
    chol = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = mean + torch.randn(200_000, 3, generator=g, dtype=torch.float64) @ chol.T
    m, c = gaussian_stats(x)
    assert torch.allclose(c, chol @ chol.T, atol=0.01)
    assert frechet_to_reference(x, mean, chol @ chol.T) < 1e-3
    shift = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    assert frechet_to_reference(x + shift, mean, chol @ chol.T) == pytest.approx(25.0, abs=0.05)


def test_unbiased_covariance_of_two_points():
    m, c = gaussian_stats(torch.tensor([[0.0], [2.0]]))
    assert float(m) == 1.0 and float(c) == 2.0  # ((−1)² + 1²) / (2 − 1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))


@pytest.mark.parametrize("n", [5, 40])
def test_reference_distance_with_fewer_samples_than_dimensions(n):
    # the N×N shortcut (n < D = 12) and the D×D path (n > D) both equal the plain formula on the fitted stats
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 12, dtype=torch.float64)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)
    cov = a @ a.T / 12 + 0.1 * torch.eye(12, dtype=torch.float64)
    mean = torch.randn(12, generator=g, dtype=torch.float64)
    m, c = gaussian_stats(x)
    assert frechet_to_reference(x, mean, cov) == pytest.approx(frechet_distance(m, c, mean, cov), rel=1e-7)
