"""The Fréchet distance between two Gaussians, and the sample statistics it is computed from.

    FD(N(μ1, Σ1), N(μ2, Σ2)) = ||μ1 − μ2||² + tr Σ1 + tr Σ2 − 2 tr((Σ1^½ Σ2 Σ1^½)^½)

FID is this distance between Gaussians fitted to Inception features; the toy world uses it directly in
pixel space against the true distribution's closed-form moments. The matrix square roots go through
symmetric eigendecompositions in float64 (Σ1^½ Σ2 Σ1^½ is symmetric positive semi-definite, so its
trace square root is the sum of the square roots of its eigenvalues): no complex parts to discard, as
``scipy.linalg.sqrtm`` of the non-symmetric Σ1Σ2 produces, and singular covariances (fewer samples
than dimensions) are fine. Eigenvalues that rounding makes slightly negative are clamped to zero.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def _one_thread():
    """CPU eigensolvers run on one thread here: on a busy 2-core machine, torch's LAPACK eigvalsh of a
    768×768 matrix was measured at 19 s with 2 threads and 0.19 s with one (threads spin while waiting
    for a core). These matrices are small enough that one thread is never the bottleneck."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eigh(matrix: torch.Tensor):
    if matrix.is_cuda:
        return torch.linalg.eigh(matrix)
    with _one_thread():
        return torch.linalg.eigh(matrix)


def _eigvalsh(matrix: torch.Tensor) -> torch.Tensor:
    if matrix.is_cuda:
        return torch.linalg.eigvalsh(matrix)
    with _one_thread():
        return torch.linalg.eigvalsh(matrix)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), unbiased covariance (D, D)) of ``features`` (N, ...) in float64; N ≥ 2."""
    x = features.detach().reshape(features.shape[0], -1).double()
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative rounding noise clamped)."""
    m = (matrix + matrix.T) / 2
    values, vectors = _eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def trace_sqrt_product(cov1: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """tr((Σ1^½ Σ2 Σ1^½)^½), which equals tr((Σ1 Σ2)^½)."""
    root = psd_sqrt(cov1)
    inner = root @ cov2 @ root
    values = _eigvalsh((inner + inner.T) / 2)
    return values.clamp_min(0).sqrt().sum()


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """FD between N(mean1, cov1) and N(mean2, cov2), computed in float64."""
    m1, m2 = mean1.double().flatten(), mean2.double().flatten()
    c1, c2 = cov1.double(), cov2.double()
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.numel(), m1.numel()):
        raise ValueError(f"shapes do not match: means {tuple(m1.shape)} {tuple(m2.shape)}, covariances "
                         f"{tuple(c1.shape)} {tuple(c2.shape)}")
    diff = m1 - m2
    value = diff @ diff + torch.trace(c1) + torch.trace(c2) - 2 * trace_sqrt_product(c1, c2)
    return float(value.clamp_min(0))


def frechet_to_reference(features: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                         cov_sqrt: torch.Tensor | None = None) -> float:
    """FD between a Gaussian fitted to ``features`` (N, ...) and a known N(mean, cov).

    With X the centred features, Σ_s = XᵀX/(N−1), so Σ^½ Σ_s Σ^½ = YᵀY with Y = XΣ^½/√(N−1), whose nonzero
    eigenvalues are those of YYᵀ: with fewer samples than dimensions only an N×N eigenproblem is solved.
    ``cov_sqrt`` (Σ^½, the one D×D decomposition) can be passed in when the reference is reused.
    """
    x = features.detach().reshape(features.shape[0], -1).double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    ref_mean = mean.double().flatten().to(x.device)
    ref_cov = cov.double().to(x.device)
    if ref_mean.numel() != d or ref_cov.shape != (d, d):
        raise ValueError(f"shapes do not match: features of {d} dims, reference mean {tuple(ref_mean.shape)} and "
                         f"covariance {tuple(ref_cov.shape)}")
    m = x.mean(0)
    centred = x - m
    root = psd_sqrt(ref_cov) if cov_sqrt is None else cov_sqrt.double().to(x.device)
    y = centred @ root / (n - 1) ** 0.5
    gram = y @ y.T if n <= d else y.T @ y
    trace_sqrt = _eigvalsh((gram + gram.T) / 2).clamp_min(0).sqrt().sum()
    diff = m - ref_mean
    value = diff @ diff + (centred * centred).sum() / (n - 1) + torch.trace(ref_cov) - 2 * trace_sqrt
    return float(value.clamp_min(0))
