"""The diffusers scheduler an exported student is sampled with, so that a pipeline reproduces ``distillkit sample``.

A distilled student samples like a consistency model: predict x0 at τ_i, then re-noise it *fully* to
τ_{i+1} (x = α x̂0 + σ ε, fresh ε), starting from ε (ADD, DMD2) or σ_τ1·ε (SiD). Diffusers' LCMScheduler
takes exactly that step, and with ``original_inference_steps = N`` its k-step schedule is the student's
own when the student's timesteps are LCM's evenly spaced ones ([999, 749, 499, 249] for N = 4): such a
student is exported with a plain LCMScheduler and needs nothing but diffusers.

Any other student (timesteps such as SiD's 625/468/312/156, a σ·ε first input, re-noising with the first
ε) gets :class:`StudentScheduler`, the same step with the student's timesteps, first-input scale and
re-noising stored in its config. Diffusers resolves a scheduler class outside its own libraries from
modules already imported, so load such a folder after ``import distillkit.schedulers``. (Diffusers also
looks up the loadable base classes by name *in that module*, which is why it imports ``SchedulerMixin``.)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers import LCMScheduler, SchedulerMixin  # noqa: F401  SchedulerMixin: see below
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

#: c_skip/c_out of LCM's boundary condition become 0/1 to float precision at every t >= 1 with this scale,
#: so ``denoised`` is the prediction itself, as in the student's own sampling
TIMESTEP_SCALING = 1e4


def lcm_timesteps(n: int, num_train_timesteps: int = 1000) -> list[int]:
    """LCMScheduler's N-step training schedule, noisiest first ([999, 749, 499, 249] for N = 4)."""
    k = num_train_timesteps // n
    return [(n - i) * k - 1 for i in range(n)]


class StudentScheduler(LCMScheduler):
    """LCM's step with a student's own timesteps (``student_timesteps``; k steps take every (i·N/k)-th,
    as ``distillkit sample`` does), first-input scale (``first_input_scale``: the pipeline multiplies its
    initial noise by it) and re-noising (``renoise``: "fresh" draws new noise per step, "fixed" reuses the
    initial noise)."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas=None, original_inference_steps: int = 50,
                 clip_sample: bool = False, clip_sample_range: float = 1.0, set_alpha_to_one: bool = True,
                 steps_offset: int = 0, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", timestep_scaling: float = TIMESTEP_SCALING,
                 rescale_betas_zero_snr: bool = False, student_timesteps: Sequence[int] = (999,),
                 first_input_scale: float = 1.0, renoise: str = "fresh"):
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, trained_betas=trained_betas,
                         original_inference_steps=original_inference_steps, clip_sample=clip_sample,
                         clip_sample_range=clip_sample_range, set_alpha_to_one=set_alpha_to_one,
                         steps_offset=steps_offset, prediction_type=prediction_type, thresholding=thresholding,
                         dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
                         timestep_spacing=timestep_spacing, timestep_scaling=timestep_scaling,
                         rescale_betas_zero_snr=rescale_betas_zero_snr)
        if renoise not in ("fresh", "fixed"):
            raise ValueError(f"renoise must be 'fresh' or 'fixed', got {renoise!r}")
        self.init_noise_sigma = float(first_input_scale)
        self._first_noise: Optional[torch.Tensor] = None

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, original_inference_steps=None,
                      timesteps: Optional[list[int]] = None, strength: float = 1.0) -> None:
        if timesteps is None:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or timesteps")
            ts = list(self.config.student_timesteps)
            if not 1 <= num_inference_steps <= len(ts):
                raise ValueError(f"this student was trained with {len(ts)} timesteps {ts}; it samples in 1 to "
                                 f"{len(ts)} steps, not {num_inference_steps}")
            timesteps = [ts[(i * len(ts)) // num_inference_steps] for i in range(num_inference_steps)]
        self.timesteps = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        self.num_inference_steps = len(timesteps)
        self.custom_timesteps = True
        self._step_index = None
        self._begin_index = None
        self._first_noise = None

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.step_index == 0:
            self._first_noise = sample / self.init_noise_sigma
        a_t = self.alphas_cumprod[timestep].to(sample.device)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        elif kind == "sample":
            x0 = model_output
        elif kind == "v_prediction":
            x0 = a_t.sqrt() * sample - (1 - a_t).sqrt() * model_output
        else:
            raise ValueError(f"unknown prediction_type {kind!r}")
        if self.step_index == self.num_inference_steps - 1:
            prev = x0
        else:
            a_next = self.alphas_cumprod[self.timesteps[self.step_index + 1]].to(sample.device)
            if self.config.renoise == "fixed":
                noise = self._first_noise
            else:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=x0.dtype)
            prev = a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise
        self._step_index += 1
        if not return_dict:
            return (prev, x0)
        return LCMSchedulerOutput(prev_sample=prev, denoised=x0)


def scheduler_for(teacher_scheduler_config, timesteps: Sequence[int], first_input_scale: float = 1.0,
                  renoise: str = "fresh"):
    """The scheduler that samples a student as ``distillkit sample`` does (see the module docstring)."""
    timesteps = [int(t) for t in timesteps]
    n = len(timesteps)
    T = teacher_scheduler_config.get("num_train_timesteps", 1000)
    plain = (timesteps == lcm_timesteps(n, T) and first_input_scale == 1.0 and (renoise == "fresh" or n == 1))
    if plain:
        return LCMScheduler.from_config(teacher_scheduler_config, original_inference_steps=n,
                                        timestep_scaling=TIMESTEP_SCALING)
    return StudentScheduler.from_config(teacher_scheduler_config, student_timesteps=timesteps,
                                        first_input_scale=float(first_input_scale), renoise=renoise,
                                        timestep_scaling=TIMESTEP_SCALING)
