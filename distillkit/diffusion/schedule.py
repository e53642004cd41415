"""The variance-preserving noise schedule every method shares.

Notation (docs/methods.md): x_t = α_t x0 + σ_t ε with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t) over integer
timesteps t ∈ {0..T−1}. The schedule is read from a diffusers scheduler's ``alphas_cumprod`` so teacher,
student and critics agree with the pipeline the teacher was trained with. All coefficients are kept in
float64 and cast to the sample's dtype only at the point of use: α_999 for SD is 0.068, and float16
rounding of 1/α there is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Cumulative-α VP schedule with per-sample coefficient lookup and noising."""

    alphas_cumprod: torch.Tensor  # (T,) float64

    def __post_init__(self):
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not torch.all((ac >= 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must be a 1-D sequence of values in [0, 1]")
        object.__setattr__(self, "alphas_cumprod", ac)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        """SD1.5/SDXL's schedule: β linear in sqrt-space between the two values."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000):
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """Read ``alphas_cumprod`` from a diffusers scheduler (DDPM/DDIM/Euler... all carry it)."""
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: not a VP (DDPM-family) scheduler")
        return cls(torch.as_tensor(ac, dtype=torch.float64))

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """Lin et al. 2023 (arXiv 2305.08891, Alg. 1): shift and scale sqrt(ᾱ) so ᾱ_{T−1} = 0 exactly."""
        a = self.alphas_cumprod.sqrt()
        a0, aT = a[0].clone(), a[-1].clone()
        a = (a - aT) * a0 / (a0 - aT)
        return NoiseSchedule(a**2)

    # -- lookup -------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def _gather(self, values: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError("timesteps are integer indices into the schedule; got a floating tensor")
        if torch.any(t < 0) or torch.any(t >= self.num_train_timesteps):
            raise IndexError(f"timestep out of range [0, {self.num_train_timesteps - 1}]")
        return values[t.cpu().long()]

    def alpha(self, t) -> torch.Tensor:
        return self._gather(self.alphas_cumprod.sqrt(), t)

    def sigma(self, t) -> torch.Tensor:
        return self._gather((1.0 - self.alphas_cumprod).sqrt(), t)

    def snr(self, t) -> torch.Tensor:
        ac = self._gather(self.alphas_cumprod, t)
        return ac / (1.0 - ac)

    def edm_sigma(self, t) -> torch.Tensor:
        """σ_t/α_t: the EDM noise level of x_t/α_t (SiD's t_init=625 ↔ EDM σ≈2.5)."""
        return self.sigma(t) / self.alpha(t)

    def coefficients(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) shaped (B, 1, 1, ...) in ``like``'s dtype/device, ready to broadcast against it."""
        t = torch.as_tensor(t).reshape(-1)
        shape = (t.numel(),) + (1,) * (like.dim() - 1)
        a = self.alpha(t).reshape(shape).to(device=like.device, dtype=like.dtype)
        s = self.sigma(t).reshape(shape).to(device=like.device, dtype=like.dtype)
        return a, s

    # -- noising and sampling -----------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = α_t x0 + σ_t ε (per-sample t, broadcast over the remaining dimensions)."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    def sample_timesteps(
        self, n: int, low: int = 0, high: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` integer timesteps uniform on [low, high] (both inclusive), drawn from ``generator``."""
        high = self.num_train_timesteps - 1 if high is None else high
        if not 0 <= low <= high < self.num_train_timesteps:
            raise ValueError(f"need 0 <= low <= high < {self.num_train_timesteps}, got low={low} high={high}")
        return torch.randint(low, high + 1, (n,), generator=generator)

    def timestep_for_edm_sigma(self, edm_sigma: float) -> int:
        """The integer t whose σ_t/α_t is closest to ``edm_sigma`` (translates EDM-space defaults)."""
        target = math.log(edm_sigma)
        ratios = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt().clamp_min(1e-30).log()
        return int(torch.argmin((ratios - target).abs()))
