"""The student: the trainable few-step generator, initialised from the teacher.

Its weights are either a full copy of the teacher UNet (or the same architecture re-initialised, for
ADD's ablation) or a LoRA adapter named ``student`` on the teacher's own frozen UNet, which then
exists once in memory for both (see :mod:`distillkit.models.adapters`). It owns its ordered timesteps
τ_1 > τ_2 > ... > τ_N and the two ways a training step obtains a student sample:

* ``"real"`` (ADD §3.1): x_s = α_s x0 + σ_s ε from *real* x0 at s uniform over the N timesteps; at the
  noisiest timestep the input is pure ε when ``zero_terminal_snr`` (the paper enforces it so training
  matches inference from pure noise).
* ``"noise"`` (data-free: SiD, DMD2 backward simulation): draw k ~ U{1..N} once per step for all
  processes, run steps 1..k−1 from noise without gradient, train on step k. With N = 1 this is a plain
  one-step generator.

Sampling denoises to x0 at each timestep and re-noises to the next (fresh ε, or the first ε reused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from distillkit.diffusion import Prediction
from distillkit.models.adapters import UNetRef, add_lora
from distillkit.models.backbone import Backbone
from distillkit.models.conditioning import Conditioning

FirstInput = Literal["noise", "sigma_noise"]
#: the adapter name of a LoRA student on the shared base (checkpoint keys and LoRA exports carry it)
ADAPTER = "student"


def subset_timesteps(timesteps: Sequence[int], steps: int) -> list[int]:
    """``steps`` of the student's timesteps, evenly spaced by index and always starting at the noisiest.

    Index i·N/k rounded down, the rule of diffusers' LCMScheduler, so an exported pipeline asked for k
    steps lands on exactly these timesteps.
    """
    ts = list(timesteps)
    if not 1 <= steps <= len(ts):
        raise ValueError(f"the student was trained with {len(ts)} timesteps {ts}; cannot sample in {steps} steps")
    return [ts[(i * len(ts)) // steps] for i in range(steps)]


@dataclass
class StudentSample:
    """One batch of student outputs in a training step: x̂0, the timestep it was made at, and the input."""

    x0: torch.Tensor
    t: torch.Tensor
    input: torch.Tensor

    def detached(self) -> "StudentSample":
        return StudentSample(self.x0.detach(), self.t, self.input.detach())


class Student:
    def __init__(self, backbone: Backbone, unet: "UNetRef | torch.nn.Module", timesteps: Sequence[int], *,
                 zero_terminal_snr: bool = True, first_input: FirstInput = "noise", renoise: str = "fresh"):
        ts = [int(t) for t in timesteps]
        if sorted(ts, reverse=True) != ts or len(set(ts)) != len(ts):
            raise ValueError(f"student timesteps must be strictly decreasing, got {ts}")
        self.backbone = backbone
        self.unet = unet if isinstance(unet, UNetRef) else UNetRef(unet)
        self.timesteps = ts
        self.zero_terminal_snr = zero_terminal_snr
        self.first_input = first_input
        self.renoise = renoise
        self._owned = self.unet.owned_parameters()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, backbone: Backbone, timesteps: Sequence[int], *, init: str = "teacher", lora: dict | None = None,
              dtype: torch.dtype = torch.float32, seed: int | None = None, **kwargs) -> "Student":
        """A student for ``backbone``: a LoRA adapter on its frozen base UNet when ``lora`` is given
        (``{"rank", "alpha", "target_modules"}``), else a full trainable UNet in ``dtype`` — the teacher's
        weights afresh (``init="teacher"``) or its architecture re-initialised (``"random"``). Random
        initialisations draw from ``seed``, so the same recipe seed gives the same start in any process."""
        from distillkit.utils import seeded

        if lora:
            if init != "teacher":
                raise ValueError("a LoRA student adapts the teacher's weights: it needs init = 'teacher'")
            add_lora(backbone.base_unet, ADAPTER, rank=lora["rank"], alpha=lora.get("alpha"),
                     target_modules=lora.get("target_modules", ("to_k", "to_q", "to_v", "to_out.0")), seed=seed)
            return cls(backbone, UNetRef(backbone.base_unet, ADAPTER), timesteps, **kwargs)
        with seeded(seed):
            if init == "teacher":
                unet = backbone.load_unet(dtype)
            elif init == "random":
                base = backbone.base_unet
                unet = type(base).from_config(base.config)
            else:
                raise ValueError(f"student init must be 'teacher' or 'random', got {init!r}")
        unet = unet.to(device=next(backbone.base_unet.parameters()).device)
        if next(unet.parameters()).dtype != dtype:  # trainable weights are kept in full precision
            unet = unet.to(dtype=dtype)
        unet.requires_grad_(True).train()
        return cls(backbone, unet, timesteps, **kwargs)

    @classmethod
    def from_teacher(cls, backbone: Backbone, teacher_unet: torch.nn.Module | None = None,
                     timesteps: Sequence[int] = (999, 749, 499, 249), **kwargs) -> "Student":
        """:meth:`build` under its former name (``teacher_unet`` is the backbone's own, so it is ignored)."""
        return cls.build(backbone, timesteps, **kwargs)

    @property
    def is_lora(self) -> bool:
        return self.unet.shares_base

    @property
    def adapter(self) -> str | None:
        return self.unet.adapter

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The student's own weights by checkpoint name (the adapter's only, for a LoRA student)."""
        return dict(self._owned)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._owned.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self._owned.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from distillkit.checkpoint import load_params

        load_params(self._owned, state, "student")

    # -- the network call ---------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, t, cond: Conditioning, unet=None) -> Prediction:
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
                  generator: torch.Generator | None = None, unet=None, grad_last: bool = False) -> StudentSample:
        """Denoise through ``timesteps`` from noise; the last step's output, timestep and input.

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
        return StudentSample(x0, t_last, x)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: Conditioning, steps: int | None = None,
               generator: torch.Generator | None = None, unet=None) -> torch.Tensor:
        """Few-step generation in ``steps`` (default: all the student's timesteps); returns x0."""
        ts = subset_timesteps(self.timesteps, len(self.timesteps) if steps is None else steps)
        return self.run_steps(noise, cond, ts, generator, unet=unet).x0

    def training_sample(self, mode: str, cond: Conditioning, shape: Sequence[int], generator: torch.Generator,
                        real_x0: torch.Tensor | None = None, device=None, dtype=torch.float32,
                        shared_generator: torch.Generator | None = None) -> StudentSample:
        """One batch of student outputs for a training step.

        Gradient flows into x0 only if grad mode is on. Draws that every process must agree on (the
        few-step index k of ``"noise"``) come from ``shared_generator`` (seeded without the rank), the
        rest from ``generator``.
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
            return StudentSample(self.predict(x_s, t, cond).x0, t, x_s)
        if mode == "noise":
            k = int(torch.randint(1, len(self.timesteps) + 1, (1,), generator=shared_generator or generator))
            return self.run_steps(noise, cond, self.timesteps[:k], generator, grad_last=True)
        raise ValueError(f"unknown student input mode {mode!r}; expected 'real' or 'noise'")
