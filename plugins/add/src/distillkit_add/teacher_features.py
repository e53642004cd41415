"""The teacher UNet's encoder as ADD's frozen feature network (``feature_network = "teacher_encoder"``).

ADD's discriminator needs a frozen network whose features tell real images from generated ones; the
paper uses DINOv2, pretrained on 142 M photos at 224². For a world with no pretrained image network —
the 16×16 toy world, or any new pixel-space domain — the one network that has seen the data is the
teacher itself. Its UNet encoder (each down block's output and the bottleneck, via
``Backbone.features``) on the clean image is used as the token maps the heads read, one head per map,
and the bottleneck's spatial mean is the image embedding for ``image_encoder = "same"``.

Details that matter:

* the image is fed at t = ``timestep`` (default 0) without noise, as x = α_t x0: the features describe
  the image, not a noise draw, so real and fake images are compared like for like;
* the prompt is the empty one: the features are unconditional and the heads get the prompt through the
  projection conditioning, as with a ViT;
* the UNet is the backbone's frozen base (``Backbone.base_unet``), never a copy and never a submodule of
  the critic, so it is neither trained, nor checkpointed, nor moved by the critic; gradients still flow
  through it to the generated image in the generator phase;
* only pixel-space families qualify (the discriminator reads pixels; a latent family would need its
  VAE encoder in the loop, and DINOv2 exists for those anyway).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


class TeacherEncoderFeatures(torch.nn.Module):
    """Frozen token maps (B, C_k, N_k) of a pixel-space teacher's UNet encoder, for images in [0, 1]."""

    def __init__(self, backbone, resolution: int, layers: Optional[Sequence[int]] = None, timestep: int = 0):
        super().__init__()
        if getattr(backbone, "spatial_factor", 8) != 1:
            raise ValueError(f"feature_network = 'teacher_encoder' needs a pixel-space model family; "
                             f"{backbone.family!r} works in latents (use a ViT feature network)")
        # Held in a list so that nn.Module does not register the backbone's UNet as the critic's submodule.
        self._backbone = [backbone]
        self.resolution = int(resolution)
        self.timestep = int(timestep)
        probe = self._maps(torch.zeros(1, 3, self.resolution, self.resolution, device=backbone.device))
        self.depth = len(probe)
        self.layers = list(range(self.depth)) if layers is None else [int(i) for i in layers]
        bad = [i for i in self.layers if not -self.depth <= i < self.depth]
        if bad or not self.layers:
            raise ValueError(f"the teacher encoder has {self.depth} feature maps (down blocks, then the bottleneck); "
                             f"cannot tap layers {bad or '[]'}: use indices 0..{self.depth - 1}")
        self.tap_channels = [probe[i].shape[1] for i in self.layers]
        self.channels = self.tap_channels[0]
        self.embed_dim = probe[-1].shape[1]
        self.use_patch_embed = False

    @property
    def backbone(self):
        return self._backbone[0]

    @property
    def num_taps(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True) -> "TeacherEncoderFeatures":
        return super().train(False)

    def _maps(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Down-block outputs then the bottleneck, for images in [0, 1]."""
        b = self.backbone
        x = b.encode_images(x01 * 2 - 1)
        t = torch.full((x.shape[0],), self.timestep, dtype=torch.long, device=x.device)
        alpha, _ = b.schedule.coefficients(t, x)
        cond = b.empty_conditioning(x.shape[0], self.resolution)
        feats = b.features(b.base_unet, alpha * x, t, cond)
        return [*feats.down, feats.mid]

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Token maps at every tap, differentiable w.r.t. ``x01``; the UNet's weights get no gradient."""
        maps = self._maps(x01)
        return [maps[i].flatten(2) for i in self.layers]

    @torch.no_grad()
    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        """One vector per image: the bottleneck's spatial mean."""
        return self._maps(x01)[-1].mean(dim=(2, 3))
