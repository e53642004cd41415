"""ADD's discriminator with the teacher UNet's encoder as its frozen feature network (toy world)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("distillkit_add")

from distillkit.roles.critic import BuildEnv  # noqa: E402
from distillkit.toy.backbone import ToyBackbone  # noqa: E402


def _disc(toy_folder, **params):
    from distillkit_add.discriminator import Discriminator, DiscriminatorConfig

    backbone = ToyBackbone.from_pretrained(toy_folder)
    cfg = DiscriminatorConfig(feature_network="teacher_encoder", text_encoder="backbone", image_encoder="same",
                              crop_prob=0.0, **params)
    env = BuildEnv(backbone=backbone, teacher=None, student=None, resolution=8, device=torch.device("cpu"))
    return backbone, Discriminator(cfg, env)


def test_heads_read_each_encoder_map(toy_folder):
    backbone, disc = _disc(toy_folder)
    # tiny UNet (8, 16): two down blocks and the bottleneck → three maps, 8, 16 and 16 channels
    assert disc.net.tap_channels == [8, 16, 16]
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    feats = disc.features(x * 2 - 1, torch.Generator().manual_seed(0), augment=False)
    assert [f.shape[1] for f in feats] == [8, 16, 16]
    c = disc.condition(["a red circle", "a blue square"], backbone.encode_prompts(["a red circle", "a blue square"], 8),
                       x.detach() * 2 - 1)
    sum(l.sum() for l in disc(feats, c)).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # the generator's gradient path


def test_the_teacher_is_neither_trained_nor_owned(toy_folder):
    backbone, disc = _disc(toy_folder)
    unet_params = {id(p) for p in backbone.unet.parameters()}
    assert not unet_params & {id(p) for p in disc.parameters()}  # not a submodule: not saved, not moved
    assert {id(p) for p in disc.trainable_parameters()} == {id(p) for p in disc.heads.parameters()}
    assert all(not p.requires_grad for p in backbone.unet.parameters())


def test_config_rules():
    from distillkit_add.discriminator import Discriminator, DiscriminatorConfig

    with pytest.raises(ValueError, match="remove weights"):
        DiscriminatorConfig(feature_network="teacher_encoder", weights="x.safetensors")
    cfg = DiscriminatorConfig(feature_network="teacher_encoder", text_encoder="backbone", image_encoder="same",
                              layers=[0, 2])
    assert Discriminator.check_assets(cfg) == []


def test_layers_pick_maps_and_are_checked(toy_folder):
    _, disc = _disc(toy_folder, layers=[-1])
    assert disc.net.tap_channels == [16] and len(disc.heads) == 1
    with pytest.raises(ValueError, match="cannot tap"):
        _disc(toy_folder, layers=[5])
