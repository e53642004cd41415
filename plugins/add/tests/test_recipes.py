"""The shipped ADD recipes validate, and every Table 1 ablation is a one-key change; a tiny end-to-end run."""

import json
from pathlib import Path

import pytest
import torch

from distillkit.errors import RecipeError
from distillkit.recipe.load import load_recipe
from distillkit_add.discriminator import DiscriminatorConfig
from distillkit_add.losses import DistillConfig

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@pytest.mark.parametrize("name,weighting", [("add_sd15.toml", "exp"), ("add_sdxl.toml", "nfsd")])
def test_shipped_recipes_resolve_and_report_the_missing_weight_files(name, weighting):
    resolved = load_recipe(RECIPES / name)
    (critic,) = resolved.critics
    assert isinstance(critic.config, DiscriminatorConfig)
    assert critic.config.feature_network == "dinov2_vits14" and critic.config.r1_gamma == 1e-5
    adv, distill = resolved.losses
    assert (adv.entry.name, adv.entry.weight, adv.critic_id) == ("add.adversarial", 1.0, "discriminator")
    assert (distill.entry.name, distill.entry.weight) == ("add.distill", 2.5)
    assert isinstance(distill.config, DistillConfig) and distill.config.weighting == weighting
    missing = " ".join(resolved.warnings)
    for f in ("weights/dinov2_vits14.safetensors", "weights/dinov2_vitl14.safetensors",
              "weights/open_clip_vit_g14.safetensors"):
        assert f in missing or Path(f).is_file()


ABLATIONS = {
    "feature network (1a)": ["critics[0].params.feature_network=dino_vits16",
                             "critics[0].params.weights=weights/dino_vits16.pth"],
    "no conditioning (1b)": ["critics[0].params.text_conditioning=false",
                             "critics[0].params.image_conditioning=false"],
    "image only (1b)": ["critics[0].params.text_conditioning=false"],
    "random student (1c)": ["student.init=random"],
    "sds weighting (1d)": ["losses[1].params.weighting=sds"],
    "one student step (1e)": ["student.timesteps=[999]"],
}


@pytest.mark.parametrize("overrides", ABLATIONS.values(), ids=ABLATIONS.keys())
def test_table1_ablations_are_one_key_each(overrides):
    load_recipe(RECIPES / "add_sd15.toml", overrides)


def test_one_step_student_samples_with_one_step():
    assert load_recipe(RECIPES / "add_sd15.toml").recipe.sample.steps == [1, 4]
    assert load_recipe(RECIPES / "add_sd15.toml", ["student.timesteps=[999]"]).recipe.sample.steps == [1]


def test_distill_only_and_adversarial_only_are_one_key_each():
    distill_only = load_recipe(RECIPES / "add_sd15.toml", ["losses[0].enabled=false"])
    assert [l.entry.name for l in distill_only.losses] == ["add.distill"]
    assert distill_only.critics == [] and distill_only.warnings == []  # the discriminator is not built
    adv_only = load_recipe(RECIPES / "add_sd15.toml", ["losses[1].enabled=false"])
    assert [(l.entry.name, l.critic_id) for l in adv_only.losses] == [("add.adversarial", "discriminator")]
    assert [c.id for c in adv_only.critics] == ["discriminator"]


def test_out_of_range_layers_fail_validation_naming_the_field():
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPES / "add_sd15.toml", ["critics[0].params.layers=[2,5,8,30]"])
    [line] = info.value.problems
    assert line.startswith("critics[0].params.layers: ")
    assert "DINOv2 ViT-S/14 has 12 blocks; cannot tap layers [30]: use indices 0..11" in line
    # the check follows feature_network: block 20 is out of range on ViT-S, fine on the 24-block ViT-L
    with pytest.raises(RecipeError, match=r"cannot tap layers \[20\]"):
        load_recipe(RECIPES / "add_sd15.toml", ["critics[0].params.layers=[2,5,8,20]"])
    load_recipe(RECIPES / "add_sd15.toml", ["critics[0].params.layers=[2,5,8,20]",
                                             "critics[0].params.feature_network=dinov2_vitl14",
                                             "critics[0].params.weights=weights/dinov2_vitl14.safetensors"])


def test_a_misspelt_param_is_reported_with_its_path():
    with pytest.raises(RecipeError, match=r"critics\[0\]\.params\.r1_gama"):
        load_recipe(RECIPES / "add_sd15.toml", ["critics[0].params.r1_gama=1e-5"])


def test_tiny_end_to_end_run(tiny_sd15_path, tmp_path):
    """Three engine steps of ADD on the tiny SD1.5 and drawn shapes: both phases train what they should."""
    from distillkit import Engine
    from distillkit.testing.shapes import write_shapes_dataset

    images = write_shapes_dataset(tmp_path / "shapes", n=6, size=64)
    recipe = {
        "run": {"name": "add", "output_dir": str(tmp_path / "run"), "max_steps": 3, "checkpoint_every": 3,
                "sample_every": 0, "progress": False},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [999, 749, 499, 249], "input": "real", "optim": {"lr": 1e-4, "betas": [0.0, 0.99]}},
        "teacher": {"guidance_scale": 3.0},
        "data": {"images": str(images), "resolution": 64, "batch_size": 2},
        "train": {"device": "cpu"},
        "critics": [{"name": "add.discriminator", "optim": {"lr": 1e-3, "betas": [0.0, 0.99]},
                     "params": {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same",
                                "r1_gamma": 1e-2}}],
        "losses": [{"name": "add.adversarial"},
                   {"name": "add.distill", "weight": 2.5, "params": {"weighting": "nfsd", "reduction": "mean"}}],
        "sample": {"prompts": ["a red circle"], "steps": [1]},
    }
    engine = Engine.from_recipe(recipe).setup()
    disc = engine.critics["discriminator"]
    heads = {n: p.detach().clone() for n, p in disc.heads.named_parameters()}
    net = {n: p.detach().clone() for n, p in disc.net.named_parameters()}
    assert engine.fit() == "completed"
    assert any(not torch.equal(p, heads[n]) for n, p in disc.heads.named_parameters()), "heads did not train"
    assert all(torch.equal(p, net[n]) for n, p in disc.net.named_parameters()), "the frozen features moved"
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("step") == 3 and "event" not in r][0]
    for key in ("loss/add.adversarial/g_adv", "critic/add.adversarial/d_real",
                "critic/add.adversarial/r1", "loss/add.distill/distill", "loss/add.distill/c_mean"):
        assert key in last and last[key] == last[key], key  # present and not NaN

    # Resume: a fresh engine on the same folder restores the heads (spectral-norm state included).
    recipe["run"]["max_steps"] = 4
    resumed = Engine.from_recipe(recipe).setup()
    assert resumed.global_step == 3
    restored = resumed.critics["discriminator"].trainable_state_dict()
    for k, v in disc.trainable_state_dict().items():
        assert torch.equal(restored[k], v), k
    assert any(k.endswith("_u") for k in restored)


def test_image_conditioning_with_a_pure_noise_student_is_refused_naming_the_fix():
    # With student.input = "noise" no real image is behind a generated one; conditioning the heads on an
    # unrelated real image's embedding gave the toy runs a blurred "average of two images" look.
    noise = ["student.input=noise", "student.timesteps=[999]", "sample.steps=[1]"]
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPES / "add_sd15.toml", noise)
    (problem,) = info.value.problems
    assert problem.path == "critics[0].params.image_conditioning"
    assert "image_conditioning = false" in problem.message
    resolved = load_recipe(RECIPES / "add_sd15.toml", [*noise, "critics[0].params.image_conditioning=false"])
    assert resolved.recipe.student.input == "noise"
