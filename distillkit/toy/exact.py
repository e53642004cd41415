"""The exact teacher: the posterior mean of the diffused toy mixture, in closed form.

With x_t = α_t x0 + σ_t ε and x0 ~ Σ_k w_k N(μ_k, s_k² I), each component diffuses to
N(α μ_k, v_k I) with v_k = α² s_k² + σ², so

    p(k | x_t) ∝ w_k N(x_t; α μ_k, v_k I)
    E[x0 | x_t, k] = μ_k + (α s_k² / v_k) (x_t − α μ_k)
    E[x0 | x_t]    = Σ_k p(k | x_t) E[x0 | x_t, k]

The weights w_k are the prompt's own (conditional) or every component's weight times its prompt's
share (unconditional: the empty prompt). Both are exact, so classifier-free guidance ε_u + s(ε_c − ε_u)
built from them is exactly CFG as defined, with no network error in either branch.

The module is called like a diffusers UNet — ``forward(sample, timestep, encoder_hidden_states)`` — and
returns the neural teacher's parameterisation (ε, v or x0, as the folder's scheduler says), so every method
reaches it through ``Backbone.denoise`` and cannot tell it from a network. The prompt is read off the conditioning by
matching it against the world's embedding table; conditioning that matches no prompt is an error,
never a silent guess. The world's tensors are held as frozen parameters: they *are* this teacher's
weights, they move with ``.to(device)``, and code that asks a teacher for its device or dtype works.
"""

from __future__ import annotations

import torch

from distillkit.diffusion import NoiseSchedule
from distillkit.diffusion.param import PREDICTION_TYPES, convert
from distillkit.toy.world import World

#: relative distance under which a conditioning vector counts as a given prompt's embedding
MATCH_TOLERANCE = 1e-2


def _frozen(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.detach().clone(), requires_grad=False)


class ExactDenoiser(torch.nn.Module):
    """E[x0 | x_t, prompt] of a :class:`World` under a VP schedule, returned as ``prediction_type`` like a UNet."""

    def __init__(self, world: World, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.prediction_type = prediction_type
        self.means = _frozen(world.means.flatten(1).double())  # (K, D)
        self.variances = _frozen(world.stds.double() ** 2)  # (K,)
        self.log_prior = _frozen(world.joint_log_weights())  # (P + 1, K); last row: the empty prompt
        self.embeddings = _frozen(world.embeddings.double().mean(dim=1))  # (P, D_embed)
        self.alphas_cumprod = _frozen(schedule.alphas_cumprod.double())
        self.image_shape = world.image_shape
        self.prompts = list(world.prompts)

    def train(self, mode: bool = True) -> "ExactDenoiser":
        return super().train(False)  # nothing to train; eval mode always

    # -- prompts ---------------------------------------------------------------------------------------
    def prompt_rows(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B,) row of :attr:`log_prior` each conditioning belongs to (P for the empty prompt)."""
        e = encoder_hidden_states.detach().double().mean(dim=1)  # (B, D_embed), the pooling of the table
        candidates = torch.cat([self.embeddings, torch.zeros_like(self.embeddings[:1])])  # (P + 1, D_embed)
        dist = torch.cdist(e, candidates)
        best, rows = dist.min(dim=1)
        scale = self.embeddings.norm(dim=1).mean()
        bad = best > MATCH_TOLERANCE * scale
        if bool(bad.any()):
            raise ValueError(f"conditioning of {int(bad.sum())} sample(s) matches no prompt of the toy world "
                             f"(nor the empty prompt): the exact teacher knows only {self.prompts}")
        return rows

    # -- the posterior -----------------------------------------------------------------------------------
    def posterior(self, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x_t] (B, D), p(k | x_t) (B, K)) in float64, for per-sample integer ``t``."""
        b = x_t.shape[0]
        x = x_t.double().reshape(b, -1)  # differentiable: SiD-style losses need d/dx_t
        ac = self.alphas_cumprod[t.long().to(self.alphas_cumprod.device)].reshape(b, 1)
        alpha, sigma2 = ac.sqrt(), 1 - ac
        v = alpha**2 * self.variances + sigma2  # (B, K)
        # ||x − α μ_k||² without a (B, K, D) tensor
        sq = (x * x).sum(1, keepdim=True) - 2 * alpha * (x @ self.means.T) + alpha**2 * (self.means**2).sum(1)
        d = x.shape[1]
        log_lik = -0.5 * sq.clamp_min(0) / v - 0.5 * d * v.log()
        resp = torch.softmax(self.log_prior[rows] + log_lik, dim=1)  # (B, K)
        gain = alpha * self.variances / v  # (B, K): the per-component Wiener gain
        # Σ_k r_k [μ_k + g_k (x − α μ_k)] = Σ_k r_k (1 − α g_k) μ_k + (Σ_k r_k g_k) x
        x0 = (resp * (1 - alpha * gain)) @ self.means + (resp * gain).sum(1, keepdim=True) * x
        return x0, resp

    def x0(self, x_t: torch.Tensor, t, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The posterior mean as an image batch in ``x_t``'s dtype."""
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        x0, _ = self.posterior(x_t, t, self.prompt_rows(encoder_hidden_states))
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True, **_unused):
        """The posterior mean expressed as :attr:`prediction_type` (ε̂ = (x_t − α x̂0)/σ, v̂ = α ε̂ − σ x̂0, or x̂0),
        as a UNet returns it (``return_dict=False``: a 1-tuple)."""
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        x0, _ = self.posterior(sample, t, self.prompt_rows(encoder_hidden_states))
        x = sample.double().reshape(sample.shape[0], -1)
        ac = self.alphas_cumprod[t.long().to(self.alphas_cumprod.device)].reshape(-1, 1)
        out = convert(x0, "sample", self.prediction_type, x, ac.sqrt(), (1 - ac).sqrt())
        out = out.reshape(sample.shape).to(sample.dtype)
        if not return_dict:
            return (out,)
        from types import SimpleNamespace

        return SimpleNamespace(sample=out)
