"""The student: a trainable few-step generator initialised from the teacher.

It owns its UNet (a full copy of the teacher, a LoRA-adapted copy, or a random re-initialisation for
ADD's ablation), its own ordered timesteps τ_1 > τ_2 > ... > τ_N, and the two ways a training step
obtains a student sample:

* ``"real"`` (ADD §3.1): x_s = α_s x0 + σ_s ε from *real* x0 at s uniform over the N timesteps; at the
  noisiest timestep the input is pure ε when ``zero_terminal_snr`` (the paper enforces it so training
  matches inference from pure noise).
* ``"noise"`` (data-free: SiD, DMD2 backward simulation): draw k ~ U{1..N} once per batch, run steps
  1..k−1 from noise without gradient, train on step k. With N = 1 this is a plain one-step generator.

Sampling denoises to x0 at each timestep and re-noises to the next (fresh ε, or the first ε reused).
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch

from distillkit.diffusion import Prediction
from distillkit.models.backbone import Backbone
from distillkit.models.conditioning import Conditioning

FirstInput = Literal["noise", "sigma_noise"]


def subset_timesteps(timesteps: Sequence[int], steps: int) -> list[int]:
    """Evenly spaced ``steps`` of the student's timesteps, always starting at the noisiest one."""
    ts = list(timesteps)
    if not 1 <= steps <= len(ts):
        raise ValueError(f"the student was trained with {len(ts)} timesteps {ts}; cannot sample in {steps} steps")
    idx = [round(i * len(ts) / steps) for i in range(steps)]
    return [ts[i] for i in idx]


class Student(torch.nn.Module):
    def __init__(self, backbone: Backbone, unet: torch.nn.Module, timesteps: Sequence[int], *,
                 zero_terminal_snr: bool = True, first_input: FirstInput = "noise", renoise: str = "fresh"):
        super().__init__()
        ts = [int(t) for t in timesteps]
        if sorted(ts, reverse=True) != ts or len(set(ts)) != len(ts):
            raise ValueError(f"student timesteps must be strictly decreasing, got {ts}")
        self.backbone = backbone  # not a submodule: frozen parts are not the student's
        self.unet = unet
        self.timesteps = ts
        self.zero_terminal_snr = zero_terminal_snr
        self.first_input = first_input
        self.renoise = renoise

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_teacher(cls, backbone: Backbone, teacher_unet: torch.nn.Module, timesteps: Sequence[int], *,
                     init: str = "teacher", lora: dict | None = None, dtype: torch.dtype = torch.float32,
                     seed: int | None = None, **kwargs) -> "Student":
        """The teacher's weights afresh in ``dtype`` (``init="teacher"``) or its architecture re-initialised
        (``"random"``), optionally with a LoRA adapter. Random initialisations (a random student, LoRA's
        A matrices) draw from ``seed``, so the same recipe seed gives the same start in any process."""
        from distillkit.utils import seeded

        with seeded(seed):
            if init == "teacher":
                try:
                    unet = backbone.load_unet(dtype)
                except NotImplementedError:  # a family without its own loader: copy what is in memory
                    unet = copy.deepcopy(teacher_unet)
            elif init == "random":
                unet = type(teacher_unet).from_config(teacher_unet.config)
            else:
                raise ValueError(f"student init must be 'teacher' or 'random', got {init!r}")
            unet = unet.to(device=next(teacher_unet.parameters()).device)
            if next(unet.parameters()).dtype != dtype:  # trainable weights are kept in full precision
                unet = unet.to(dtype=dtype)
            if lora:
                from peft import LoraConfig

                unet.requires_grad_(False)
                unet.add_adapter(LoraConfig(r=lora["rank"], lora_alpha=lora.get("alpha") or lora["rank"],
                                            init_lora_weights="gaussian",
                                            target_modules=list(lora.get("target_modules",
                                                                         ["to_k", "to_q", "to_v", "to_out.0"]))))
            else:
                unet.requires_grad_(True)
        unet.train()
        return cls(backbone, unet, timesteps, **kwargs)

    @property
    def is_lora(self) -> bool:
        return bool(getattr(self.unet, "peft_config", None))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    # -- the network call ---------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, t, cond: Conditioning, unet: torch.nn.Module | None = None) -> Prediction:
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return self.backbone.denoise(unet if unet is not None else self.unet, x_t, t, cond)

    def first_step_input(self, noise: torch.Tensor) -> torch.Tensor:
        """Input at τ_1 from pure noise: ε itself, or σ_τ1 ε (SiD's ``add_noise(0, z, t_init)``)."""
        if self.first_input == "noise":
            return noise
        _, sigma = self.backbone.schedule.coefficients(torch.tensor([self.timesteps[0]]), noise)
        return sigma * noise

    # -- sampling -----------------------------------------------------------------------------
    def run_steps(self, noise: torch.Tensor, cond: Conditioning, timesteps: Sequence[int],
                  generator: torch.Generator | None = None, unet=None, grad_last: bool = False) -> tuple:
        """Denoise through ``timesteps`` from noise. Returns (x0, last_input, last_t).

        All steps but the last run without gradient; the last keeps the graph when ``grad_last``
        (stop-gradient between steps, as SiD few-step and DMD2 backward simulation do).
        """
        schedule = self.backbone.schedule
        x = self.first_step_input(noise)
        x0 = None
        for i, t in enumerate(timesteps):
            last = i == len(timesteps) - 1
            with torch.set_grad_enabled(grad_last and last and torch.is_grad_enabled()):
                x0 = self.predict(x, t, cond, unet=unet).x0
            if not last:
                if self.renoise == "fixed":
                    eps = noise
                else:
                    eps = torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(noise)
                x = schedule.add_noise(x0.detach(), eps, torch.full((noise.shape[0],), timesteps[i + 1]))
        t_last = torch.full((noise.shape[0],), timesteps[-1], dtype=torch.long)
        return x0, x, t_last

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: Conditioning, steps: int | None = None,
               generator: torch.Generator | None = None, unet=None) -> torch.Tensor:
        """Few-step generation in ``steps`` (default: all the student's timesteps); returns x0."""
        ts = subset_timesteps(self.timesteps, len(self.timesteps) if steps is None else steps)
        return self.run_steps(noise, cond, ts, generator, unet=unet)[0]

    def training_sample(self, mode: str, cond: Conditioning, shape: Sequence[int], generator: torch.Generator,
                        real_x0: torch.Tensor | None = None, device=None, dtype=torch.float32) -> tuple:
        """One batch of student outputs for a training step. Returns (x0, t, input).

        Gradient flows into x0 only if grad mode is on (the engine turns it off when only critics train).
        """
        n = shape[0]
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        if mode == "real":
            if real_x0 is None:
                raise ValueError("student input 'real' needs real images: add [data] images to the recipe")
            schedule = self.backbone.schedule
            idx = torch.randint(0, len(self.timesteps), (n,), generator=generator)
            t = torch.tensor(self.timesteps, dtype=torch.long)[idx]
            x_s = schedule.add_noise(real_x0, noise, t)
            if self.zero_terminal_snr:
                pure = (t == max(self.timesteps)).to(x_s.device).reshape(-1, *([1] * (x_s.dim() - 1)))
                x_s = torch.where(pure, noise, x_s)
            return self.predict(x_s, t, cond).x0, t, x_s
        if mode == "noise":
            k = int(torch.randint(1, len(self.timesteps) + 1, (1,), generator=generator))
            x0, x_in, t = self.run_steps(noise, cond, self.timesteps[:k], generator, grad_last=True)
            return x0, t, x_in
        raise ValueError(f"unknown student input mode {mode!r}; expected 'real' or 'noise'")
