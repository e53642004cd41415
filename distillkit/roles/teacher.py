"""The frozen teacher: a denoiser plus its classifier-free guidance scale.

The teacher never owns a ``no_grad``: ADD and the SDS family want a constant target (use
:meth:`Teacher.target`), while SiD differentiates *through the teacher's input* with frozen weights
(use :meth:`Teacher.predict` inside the graph). It calls its UNet with no adapter active, so a UNet
that also carries a LoRA student or fake score (the shared base) is the plain teacher here.
"""

from __future__ import annotations

import torch

from distillkit.diffusion import Prediction, guided
from distillkit.models.adapters import UNetRef, adapter_names, adapter_parameters, unwrap
from distillkit.models.backbone import Backbone
from distillkit.models.conditioning import Conditioning


def freeze_base(unet: torch.nn.Module) -> None:
    """Freeze every weight of ``unet`` except the adapters other roles train on it; eval mode."""
    owned = {id(p) for name in adapter_names(unet) for p in adapter_parameters(unet, name).values()}
    for p in unet.parameters():
        if id(p) not in owned:
            p.requires_grad_(False)
    unet.eval()


def guided_prediction(backbone: Backbone, unet: UNetRef, x_t: torch.Tensor, t, cond: Conditioning,
                      uncond: Conditioning | None, scale: float) -> Prediction:
    """``unet``'s CFG prediction at ``scale`` (diffusers' convention: 1 evaluates only ``cond``, 0 only
    ``uncond``, negative is allowed), gradients through ``x_t``; shared by the teacher and the fake score."""
    t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
    if uncond is not None:
        uncond = uncond.expand(x_t.shape[0])

    def call(x, tt, c):
        return backbone.denoise(unet, x, tt, c).output

    out = guided(call, x_t, t, cond, uncond, scale)
    alpha, sigma = backbone.schedule.coefficients(t, x_t)
    return Prediction(out, backbone.prediction_type, x_t, alpha, sigma)


class Teacher:
    def __init__(self, backbone: Backbone, unet: "torch.nn.Module | UNetRef", guidance_scale: float = 1.0):
        self.backbone = backbone
        self.unet = UNetRef(unwrap(unet))  # no adapter: the base weights alone
        freeze_base(self.unet.module)
        self.guidance_scale = float(guidance_scale)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning | None = None,
                scale: float | None = None) -> Prediction:
        """CFG prediction at ``scale`` (default: the recipe's teacher scale), gradients through x_t allowed.

        ``cond`` is the conditional branch and ``uncond`` the unconditional one: scale 1 evaluates only
        ``cond``, 0 only ``uncond`` (diffusers' convention, see :func:`distillkit.diffusion.guided`)."""
        scale = self.guidance_scale if scale is None else scale
        return guided_prediction(self.backbone, self.unet, x_t, t, cond, uncond, scale)

    @torch.no_grad()
    def target(self, x_t, t, cond, uncond=None, scale=None) -> Prediction:
        """Same as :meth:`predict` but a constant: the stop-gradient target of ADD/SDS-style losses."""
        return self.predict(x_t.detach(), t, cond, uncond, scale)
