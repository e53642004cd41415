"""The teacher sampled by a standard solver: the reference curve every student is compared with.

Deterministic DDIM (η = 0, Song et al. 2021, eq. 12) with "trailing" timesteps, the spacing SDXL-Turbo
and LCM use: k steps at t_i = round(T − i·T/k) − 1, so 1 step is the single denoising at t = 999 and
4 steps land on 999, 749, 499, 249 — the timesteps of a 4-step student. Each step predicts x̂0 with
classifier-free guidance and moves to the next timestep along the predicted ε:

    x_{t'} = α_{t'} x̂0 + σ_{t'} ε̂,   and the last step returns x̂0.

Sampling starts from unit Gaussian noise, as pipelines do (SD's α_999 = 0.068 is not zero, so the
teacher was never trained on pure noise; that mismatch is part of what few-step sampling costs).
"""

from __future__ import annotations

from typing import Sequence

import torch

from distillkit.diffusion import Prediction, guided

SOLVER = "DDIM (eta=0, trailing timesteps)"


def trailing_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """k evenly spaced timesteps ending one stride above 0 and starting at T − 1 (diffusers' "trailing")."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [int(round(num_train_timesteps - i * num_train_timesteps / steps)) - 1 for i in range(steps)]


@torch.no_grad()
def ddim_sample(backbone, unet, noise: torch.Tensor, cond, uncond, steps: int, guidance_scale: float) -> torch.Tensor:
    """x̂0 (in diffusion space) after ``steps`` DDIM steps of ``unet`` from ``noise``, with CFG at ``guidance_scale``."""
    schedule = backbone.schedule
    x = noise
    b = x.shape[0]
    uncond = None if uncond is None else uncond.expand(b)

    def call(x_in, t_in, c):
        return backbone.denoise(unet, x_in, t_in, c).output

    timesteps = trailing_timesteps(steps, schedule.num_train_timesteps)
    x0 = x
    for i, t in enumerate(timesteps):
        tt = torch.full((b,), t, dtype=torch.long, device=x.device)
        out = guided(call, x, tt, cond, uncond, guidance_scale)
        alpha, sigma = schedule.coefficients(tt, x)
        pred = Prediction(out, backbone.prediction_type, x, alpha, sigma)
        x0, eps = pred.x0, pred.eps
        if i + 1 < len(timesteps):
            nxt = torch.full((b,), timesteps[i + 1], dtype=torch.long, device=x.device)
            a_next, s_next = schedule.coefficients(nxt, x)
            x = a_next * x0 + s_next * eps
    return x0


def sample_teacher(backbone, prompts: Sequence[str], steps: int, guidance_scale: float, resolution: int,
                   seed: int, batch_size: int = 256, unet=None) -> torch.Tensor:
    """Teacher samples in diffusion space for ``prompts``, in batches, from noise seeded by ``seed``."""
    unet = backbone.teacher_unet if unet is None else unet
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        noise = torch.randn(backbone.sample_shape(len(chunk), resolution), generator=g).to(backbone.device)
        cond = backbone.encode_prompts(chunk, resolution)
        uncond = backbone.empty_conditioning(len(chunk), resolution)
        out.append(ddim_sample(backbone, unet, noise, cond, uncond, steps, guidance_scale).float().cpu())
    return torch.cat(out)
