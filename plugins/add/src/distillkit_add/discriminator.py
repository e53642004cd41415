"""ADD's discriminator critic (recipe name ``add.discriminator``): frozen features + trainable heads.

ADD §3.2 (arXiv 2311.17042), following StyleGAN-T: images in [-1, 1] are DiffAugmented, mapped to
[0, 1], randomly cropped (p = 0.5, only when larger than the feature network's input), resized and
normalised, and passed through a frozen ViT F; heads D_k on F's token maps at several layers give one
logit per token, conditioned on [text embedding, real-image embedding] by projection. Only the heads
(including their conditioning projections) are trained; ``trainable_parameters`` and the checkpointed
state say so explicitly, so a frozen multi-hundred-million-parameter encoder is never optimised or saved.

Every Table 1 ablation of the paper is a config key: ``feature_network`` (DINOv2 ViT-S / DINOv1 ViT-S /
DINOv2 ViT-L / CLIP ViT-L, plus CLIP ViT-B and a tiny test net), ``text_conditioning`` and
``image_conditioning`` on/off.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import pydantic
import torch

from distillkit.models.conditioning import Conditioning
from distillkit.roles.critic import BuildEnv, Critic

from distillkit_add.augment import diff_augment, parse_policy, random_crop
from distillkit_add.encoders import BackboneTextEncoder, ImageEncoder, OpenCLIPTextEncoder, open_clip_text_problem
from distillkit_add.features import NETWORKS, build_feature_network, layers_problem, spec_weights_problem
from distillkit_add.heads import DiscHead

FeatureNetworkName = Literal["dinov2_vits14", "dino_vits16", "clip_vitb16", "dinov2_vitl14", "clip_vitl14", "tiny",
                             "teacher_encoder"]
ImageEncoderName = Literal["dinov2_vitl14", "same", "dinov2_vits14", "dino_vits16", "clip_vitb16", "clip_vitl14",
                           "tiny", "teacher_encoder"]
#: the frozen teacher UNet's encoder (pixel-space families without a pretrained ViT, such as the toy world)
TEACHER_ENCODER = "teacher_encoder"

#: how check_assets names a field (the critic's index in the recipe is not known to it)
FIELD = "critics[*].params.{}"


class DiscriminatorConfig(pydantic.BaseModel):
    """``[[critics]] name = "add.discriminator"`` → ``params``. Defaults follow the ADD paper where it is
    explicit ([paper]) and StyleGAN-T's code otherwise ([code])."""

    model_config = pydantic.ConfigDict(extra="forbid")

    feature_network: FeatureNetworkName = pydantic.Field(
        "dinov2_vits14", description="frozen ViT F: DINOv2 ViT-S/14 [paper]; others for the Table 1 ablation")
    weights: Optional[str] = pydantic.Field(None, description="local weights file of the feature network")
    allow_random_init: bool = pydantic.Field(
        False, description="build frozen nets with random weights when no file is given (tests/benchmarks only)")
    layers: Optional[list[int]] = pydantic.Field(
        None, description="tapped block indices; default [2,5,8,11] for 12-block nets [code: StyleGAN-T]")
    use_patch_embed: bool = pydantic.Field(True, description="also tap the patch embedding (a 5th head) [code]")
    head_channels: int = pydantic.Field(64, ge=1, description="width of each head's convolutions")
    cmap_dim: int = pydantic.Field(64, ge=1, description="projection dimension of conditional heads [code]")
    text_conditioning: bool = pydantic.Field(True, description="condition heads on the prompt [paper]")
    text_encoder: Literal["open_clip", "backbone"] = pydantic.Field(
        "open_clip", description="'open_clip': OpenCLIP text tower [paper: ViT-g-14]; 'backbone': the diffusion "
                                 "model's own (pooled) text embedding, no extra weights")
    text_encoder_name: str = "ViT-g-14"
    text_encoder_weights: Optional[str] = None
    image_conditioning: bool = pydantic.Field(True, description="condition heads on the real image [paper]")
    image_encoder: ImageEncoderName = pydantic.Field(
        "dinov2_vitl14", description="CLS of DINOv2 ViT-L/14 on the real x0 [paper]; 'same': the feature network's")
    image_encoder_weights: Optional[str] = None
    augment: Optional[str] = pydantic.Field("color,translation,cutout", description="DiffAugment policy [code]")
    crop_prob: float = pydantic.Field(0.5, ge=0, le=1, description="random crop to F's resolution [code]")
    r1_gamma: float = pydantic.Field(1e-5, ge=0, description="γ of γ·R1 on the heads' inputs [paper]")
    reduction: Literal["paper", "stylegan_t"] = pydantic.Field(
        "paper", description="hinge reduction: sum over heads [paper] or StyleGAN-T's mean/B [code]")

    @pydantic.field_validator("augment")
    @classmethod
    def _policy(cls, v):
        parse_policy(v)
        return v or ""  # "" (not None) for no augmentation: None is dropped from recipe.toml, whose reader
        # would then take the default policy

    @pydantic.field_validator("layers")
    @classmethod
    def _layers_in_range(cls, v, info: pydantic.ValidationInfo):
        """Against the chosen network's block count (declared before ``layers``, so already validated)."""
        network = info.data.get("feature_network")
        if network == TEACHER_ENCODER:  # its depth is the teacher's, known once the model loads
            return v
        problem = layers_problem(NETWORKS[network], v) if v is not None and network is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.feature_network == "tiny" and self.weights is not None:
            raise ValueError("feature_network = 'tiny' is a random-init test network; remove weights")
        if self.feature_network == TEACHER_ENCODER and self.weights is not None:
            raise ValueError("feature_network = 'teacher_encoder' is the teacher's own UNet; remove weights")
        if not self.use_patch_embed and self.layers == []:
            raise ValueError("no discriminator heads: give at least one entry in layers or use_patch_embed = true")
        return self

    @property
    def conditional(self) -> bool:
        return self.text_conditioning or self.image_conditioning


class Discriminator(Critic):
    name = "discriminator"
    Config = DiscriminatorConfig

    @classmethod
    def recipe_problems(cls, config: DiscriminatorConfig, recipe) -> list[tuple[str, str]]:
        # c_img is the embedding of the real image each student input was noised from (ADD §3.2). A student
        # fed pure noise has no such image: pairing its output with an unrelated real image lets the heads
        # tell real from fake by the mismatch alone, and pulls every sample towards a random real image.
        if config.image_conditioning and recipe.student.input == "noise":
            return [("image_conditioning", "the student's inputs are pure noise (student.input = 'noise'), so no "
                                           "real image is behind a generated one to condition on: set "
                                           "image_conditioning = false, or student.input = 'real'")]
        return []

    def __init__(self, config: DiscriminatorConfig, env: BuildEnv):
        super().__init__(config, env)
        cfg = config
        if cfg.feature_network == TEACHER_ENCODER:
            from distillkit_add.teacher_features import TeacherEncoderFeatures

            self.net = TeacherEncoderFeatures(env.backbone, env.resolution, layers=cfg.layers)
        else:
            self.net = build_feature_network(cfg.feature_network, cfg.weights,
                                             allow_random_init=cfg.allow_random_init, layers=cfg.layers,
                                             use_patch_embed=cfg.use_patch_embed, field=FIELD.format("weights"))
        c_dim = 0
        self.text_encoder: Optional[torch.nn.Module] = None
        if cfg.text_conditioning:
            if cfg.text_encoder == "open_clip":
                self.text_encoder = OpenCLIPTextEncoder(cfg.text_encoder_name, cfg.text_encoder_weights,
                                                        allow_random_init=cfg.allow_random_init,
                                                        field=FIELD.format("text_encoder_weights"))
            else:
                self.text_encoder = BackboneTextEncoder(env.backbone, env.resolution)
            c_dim += self.text_encoder.dim
        self.image_encoder: Optional[ImageEncoder] = None
        if cfg.image_conditioning:
            if cfg.image_encoder == "same":
                network = self.net
            elif cfg.image_encoder == TEACHER_ENCODER:
                from distillkit_add.teacher_features import TeacherEncoderFeatures

                network = TeacherEncoderFeatures(env.backbone, env.resolution)
            else:
                network = build_feature_network(cfg.image_encoder, cfg.image_encoder_weights,
                                                allow_random_init=cfg.allow_random_init, layers=[],
                                                use_patch_embed=False, field=FIELD.format("image_encoder_weights"))
            self.image_encoder = ImageEncoder(network)
            c_dim += self.image_encoder.dim
        self.c_dim = c_dim
        self.heads = torch.nn.ModuleList(
            DiscHead(channels, cfg.head_channels, c_dim, cfg.cmap_dim)
            for channels in getattr(self.net, "tap_channels", [self.net.channels] * self.net.num_taps))
        self.to(env.device)

    # -- assets --------------------------------------------------------------------------------------
    @classmethod
    def check_assets(cls, config) -> list[str]:
        cfg = config if isinstance(config, DiscriminatorConfig) else DiscriminatorConfig.model_validate(config)
        problems = [] if cfg.feature_network == TEACHER_ENCODER else [
            spec_weights_problem(NETWORKS[cfg.feature_network], cfg.weights, cfg.allow_random_init,
                                 FIELD.format("weights"))]
        if cfg.text_conditioning and cfg.text_encoder == "open_clip":
            problems.append(open_clip_text_problem(cfg.text_encoder_name, cfg.text_encoder_weights,
                                                   cfg.allow_random_init, FIELD.format("text_encoder_weights")))
        if cfg.image_conditioning and cfg.image_encoder not in ("same", TEACHER_ENCODER):
            problems.append(spec_weights_problem(NETWORKS[cfg.image_encoder], cfg.image_encoder_weights,
                                                 cfg.allow_random_init, FIELD.format("image_encoder_weights")))
        return [p for p in problems if p]

    # -- what the engine trains and saves -------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The heads and their conditioning projections — never the frozen encoders."""
        return list(self.heads.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads' parameters and buffers (spectral-norm power-iteration vectors included)."""
        return {f"heads.{k}": v.detach() for k, v in self.heads.state_dict().items()}

    # -- the pieces a loss composes -------------------------------------------------------------------
    def features(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None,
                 augment: bool = True) -> list[torch.Tensor]:
        """Frozen token maps of images in [-1, 1], one per head; the graph w.r.t. ``pixels`` is kept.

        With ``augment``, DiffAugment then the random crop are drawn from ``generator`` — call once per
        branch (real, fake) so each gets an independent draw, as in StyleGAN-T.
        """
        x = pixels
        if augment and self.config.augment:
            x = diff_augment(x, self.config.augment, generator)
        x01 = (x + 1) / 2
        if augment:
            x01 = random_crop(x01, self.net.resolution, self.config.crop_prob, generator)
        return self.net(x01)

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str], cond: Optional[Conditioning] = None) -> torch.Tensor:
        if self.text_encoder is None:
            raise ValueError("text_conditioning is off for this discriminator")
        return self.text_encoder(prompts, cond)

    @torch.no_grad()
    def embed_image(self, real_pixels: torch.Tensor) -> torch.Tensor:
        if self.image_encoder is None:
            raise ValueError("image_conditioning is off for this discriminator")
        return self.image_encoder(real_pixels)

    @torch.no_grad()
    def condition(self, prompts: Sequence[str], cond: Optional[Conditioning],
                  real_pixels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """c = [c_text, c_img] (whichever are enabled), or None for an unconditional discriminator.

        The image part always embeds the *real* image, for the real and the fake branch alike (§3.2).
        """
        parts = []
        if self.text_encoder is not None:
            parts.append(self.embed_text(prompts, cond))
        if self.image_encoder is not None:
            if real_pixels is None:
                raise ValueError("image_conditioning needs the real images the student inputs were made from")
            parts.append(self.embed_image(real_pixels))
        return torch.cat(parts, dim=-1) if parts else None

    def logits(self, features: Sequence[torch.Tensor], c: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """Token logits (B, N_k) of each head on its token map."""
        if len(features) != len(self.heads):
            raise ValueError(f"{len(self.heads)} heads but {len(features)} feature maps")
        return [head(f, c) for head, f in zip(self.heads, features)]

    def forward(self, features: Sequence[torch.Tensor], c: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """The trainable part only (heads on given features), so a DDP wrapper's forward covers exactly it."""
        return self.logits(features, c)
