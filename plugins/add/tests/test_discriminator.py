"""The add.discriminator critic on the tiny ViT: shapes, what trains, asset checks, R1, weight loading."""

import pydantic
import pytest
import torch
import torch.nn.functional as F

from distillkit.errors import ModelLoadError
from distillkit_add import functional as Fn
from distillkit_add.discriminator import Discriminator
from distillkit_add.features import NETWORKS, build_feature_network

DINO_FIX = ("download them on a machine with internet (timm: vit_small_patch14_dinov2.lvd142m) and put the file "
            "there, or set allow_random_init = true for a smoke test")


def make(build_env, **params) -> Discriminator:
    return Discriminator.build(Discriminator.Config(**params), build_env)


def _pixels(b=2, seed=0, size=64):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_heads_and_logit_shapes(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params)
    # tiny ViT: 32×32 input, patch 8 → 16 tokens of width 32; taps = patch embedding + blocks [1, 3]
    assert len(disc.heads) == 3
    feats = disc.features(_pixels(), torch.Generator().manual_seed(0))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16)] * 3
    c = disc.condition(["a red circle", "a blue square"], build_env.backbone.encode_prompts(
        ["a red circle", "a blue square"], 64), _pixels(seed=1))
    # text: tiny SD1.5's 32-wide CLIP states (mean-pooled); image: the tiny ViT's 32-wide CLS
    assert disc.c_dim == 64 and c.shape == (2, 64)
    logits = disc(feats, c)
    assert [tuple(l.shape) for l in logits] == [(2, 16)] * 3
    assert all(torch.isfinite(l).all() for l in logits)


def test_layers_and_patch_embed_select_heads(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params, layers=[0, 1, 2, 3], use_patch_embed=False)
    assert len(disc.heads) == 4
    assert len(make(build_env, **tiny_disc_params, layers=[-4, -1]).heads) == 3  # from the end, + patch embed
    # out of range: rejected by the config (so by `distillkit validate`), before anything is built
    msg = r"tiny test ViT has 4 blocks; cannot tap layers \[7, -5\]: use indices 0\.\.3 \(or -4\.\.-1"
    with pytest.raises(pydantic.ValidationError, match=msg):
        Discriminator.Config(**tiny_disc_params, layers=[1, 7, -5])
    with pytest.raises(ValueError, match="4 blocks"):  # and by the network itself when built directly
        build_feature_network("tiny", layers=[4])


def test_only_heads_and_projections_are_trainable(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params)
    trainable = {id(p) for p in disc.trainable_parameters()}
    assert trainable == {id(p) for p in disc.heads.parameters()}
    for name, p in disc.named_parameters():
        assert p.requires_grad == name.startswith("heads."), name
    # the conditioning projections are part of the heads
    assert all(any(p is q for q in disc.trainable_parameters()) for h in disc.heads for p in h.cmapper.parameters())
    state = disc.trainable_state_dict()
    assert state and all(k.startswith("heads.") for k in state)
    assert any(k.endswith("_u") for k in state)  # spectral-norm power-iteration state is checkpointed
    assert not any(k.startswith("net.") for k in state)


def test_frozen_networks_stay_in_eval_mode(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params).train()
    assert disc.heads.training
    assert not disc.net.training and not disc.net.model.training


def test_features_keep_the_graph_to_pixels_but_not_to_the_network(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params)
    x = _pixels().requires_grad_(True)
    sum(f.sum() for f in disc.features(x, torch.Generator().manual_seed(0))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.net.parameters())


def test_r1_on_real_features_is_positive_finite_and_reaches_the_heads(build_env, tiny_disc_params):
    disc = make(build_env, **tiny_disc_params)
    real = _pixels()
    with torch.no_grad():
        feats = disc.features(real, torch.Generator().manual_seed(0))
    feats = [f.requires_grad_(True) for f in feats]
    c = disc.condition(["a", "b"], build_env.backbone.encode_prompts(["a", "b"], 64), real)
    r1 = Fn.r1_penalty(disc(feats, c), feats)
    assert torch.isfinite(r1) and r1.item() > 0
    r1.backward()
    # R1 is a function of the heads' input-Jacobian: it reaches their weights and the conditioning
    # projection (additive output biases drop out of a gradient w.r.t. the input, so not those).
    for head in disc.heads:
        assert head.cmapper.weight.grad.abs().sum() > 0
        assert head.main[0][0].parametrizations.weight.original.grad.abs().sum() > 0


def test_conditioning_switches(build_env, tiny_disc_params):
    cond = build_env.backbone.encode_prompts(["x", "y"], 64)
    none = make(build_env, **tiny_disc_params, text_conditioning=False, image_conditioning=False)
    assert none.c_dim == 0 and none.condition(["x", "y"], cond, None) is None
    assert [tuple(l.shape) for l in none(none.features(_pixels()), None)] == [(2, 16)] * 3
    text = make(build_env, **tiny_disc_params, image_conditioning=False)
    assert text.condition(["x", "y"], cond, None).shape == (2, 32)
    image = make(build_env, **tiny_disc_params, text_conditioning=False)
    real = _pixels(seed=3)
    c = image.condition(["x", "y"], cond, real)
    # 'same' = the feature network's own final CLS on the *real* image, L2-normalised
    expected = F.normalize(image.net.embed((real + 1) / 2), dim=-1)
    torch.testing.assert_close(c, expected)
    with pytest.raises(ValueError, match="real images"):
        image.condition(["x", "y"], cond, None)


def test_random_init_networks_are_identical_across_builds(build_env, tiny_disc_params):
    a, b = make(build_env, **tiny_disc_params), make(build_env, **tiny_disc_params)
    for (n, p), (_, q) in zip(a.net.named_parameters(), b.net.named_parameters()):
        assert torch.equal(p, q), n


# -- config and assets ------------------------------------------------------------------------------------
def test_config_rejects_typos_and_bad_values():
    with pytest.raises(pydantic.ValidationError, match="r1_gama"):
        Discriminator.Config(r1_gama=1e-5)
    with pytest.raises(pydantic.ValidationError, match="dinov3"):
        Discriminator.Config(feature_network="dinov3")
    with pytest.raises(pydantic.ValidationError, match="unknown DiffAugment"):
        Discriminator.Config(augment="color,flip")
    with pytest.raises(pydantic.ValidationError, match="random-init test network"):
        Discriminator.Config(feature_network="tiny", weights="w.safetensors")


def test_check_assets_names_missing_files(tmp_path):
    cfg = Discriminator.Config(weights="weights/dinov2_vits14.safetensors", text_encoder_weights=None,
                               image_encoder_weights=str(tmp_path / "nope.pth"))
    problems = Discriminator.check_assets(cfg)
    assert problems[0] == ("critics[*].params.weights: DINOv2 ViT-S/14 weights not found at "
                           f"'weights/dinov2_vits14.safetensors'; {DINO_FIX}")
    assert problems[1].startswith("critics[*].params.text_encoder_weights: no OpenCLIP ViT-g-14 text encoder "
                                  "weights file is set; download them on a machine with internet (open_clip: ")
    assert 'set text_encoder_weights = "path/to/file"' in problems[1]
    assert problems[2].startswith("critics[*].params.image_encoder_weights: DINOv2 ViT-L/14 weights not found at "
                                  f"'{tmp_path / 'nope.pth'}'; download them on a machine with internet (timm: "
                                  "vit_large_patch14_dinov2.lvd142m)")
    assert len(problems) == 3


def test_check_assets_accepts_present_files_random_init_and_switched_off_parts(tmp_path):
    present = tmp_path / "w.safetensors"
    present.write_bytes(b"")
    assert Discriminator.check_assets(Discriminator.Config(
        weights=str(present), text_encoder_weights=str(present), image_encoder_weights=str(present))) == []
    assert Discriminator.check_assets(Discriminator.Config(allow_random_init=True)) == []
    assert Discriminator.check_assets({"feature_network": "tiny", "text_encoder": "backbone",
                                       "image_encoder": "same"}) == []
    # a given-but-missing path is reported even with random init allowed
    assert len(Discriminator.check_assets(Discriminator.Config(allow_random_init=True, weights="gone.pth"))) == 1
    only_feature = Discriminator.check_assets(Discriminator.Config(text_conditioning=False, image_conditioning=False))
    assert only_feature == [f"critics[*].params.weights: no DINOv2 ViT-S/14 weights file is set; download them on "
                            f"a machine with internet (timm: vit_small_patch14_dinov2.lvd142m), put the file on "
                            f"this machine and set weights = \"path/to/file\", or set allow_random_init = true for "
                            f"a smoke test"]


def test_building_without_weights_fails_with_the_check_assets_message(build_env):
    with pytest.raises(ModelLoadError, match="no DINOv2 ViT-S/14 weights file is set"):
        make(build_env, text_conditioning=False, image_conditioning=False)


# -- real architectures, random init (mechanics only; no pretrained weights exist offline) ----------------------
@pytest.mark.parametrize("key,tokens,width", [("dinov2_vits14", 256, 384), ("dino_vits16", 196, 384),
                                              ("clip_vitb16", 196, 768)])
def test_real_feature_networks_tap_five_token_maps(key, tokens, width):
    net = build_feature_network(key, allow_random_init=True)
    assert net.resolution == 224 and net.num_taps == 5
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, width, tokens)] * 5
    assert all(not p.requires_grad for p in net.parameters())


def test_dinov2_weights_load_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    source = build_feature_network("dinov2_vits14", allow_random_init=True)
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(0.5)  # differ from the seeded random init
    path = tmp_path / "dinov2_vits14.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = build_feature_network("dinov2_vits14", str(path))
    for (n, p), (_, q) in zip(source.model.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(p, q), n


def test_a_broken_weights_file_is_a_model_load_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="could not load DINOv2 ViT-S/14 weights"):
        build_feature_network("dinov2_vits14", str(bad))


def test_every_table1_feature_network_is_known():
    assert {"dinov2_vits14", "dino_vits16", "dinov2_vitl14", "clip_vitl14"} <= set(NETWORKS)


def test_open_clip_text_conditioning_with_a_small_random_tower(build_env):
    # ADD's text encoder is OpenCLIP ViT-g-14; ViT-B-32 has the same code path at a tenth of the size.
    disc = make(build_env, feature_network="tiny", image_conditioning=False, text_encoder_name="ViT-B-32",
                allow_random_init=True)
    assert disc.text_encoder.model.visual is None  # the vision tower is dropped after loading
    assert all(not p.requires_grad for p in disc.text_encoder.parameters())
    c = disc.embed_text(["a red circle", "a blue square", "a red circle"])
    assert c.shape == (3, 512) and disc.c_dim == 512
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(c[0], c[2])
    assert not torch.allclose(c[0], c[1])


def test_no_augmentation_survives_the_resolved_recipe():
    """augment = "" must be written to recipe.toml as "" (None would be dropped, and reading the file back
    would restore the default policy: a resolved recipe that does not reproduce the run)."""
    import tomllib

    from distillkit.recipe.toml_io import _dump
    from distillkit_add.discriminator import DiscriminatorConfig

    for given in ("", None):
        config = DiscriminatorConfig(augment=given, feature_network="tiny", allow_random_init=True)
        back = DiscriminatorConfig(**tomllib.loads(_dump({"p": config.model_dump()}, "t"))["p"])
        assert back.augment == "" and not back.augment
