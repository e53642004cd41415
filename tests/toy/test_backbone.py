"""The toy families through the path a user takes: folders written, loaded, saved and loaded again."""

from __future__ import annotations

import pytest
import torch

from distillkit.errors import ModelLoadError, UsageError
from distillkit.toy.backbone import ToyBackbone, ToyExactBackbone
from distillkit.toy.exact import ExactDenoiser
from distillkit.toy.folder import read_world


def _call(backbone, unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 8, 8, generator=g)
    cond = backbone.encode_prompts(["a red circle", "", "a blue square"], 8)
    return backbone.denoise(unet, x, torch.tensor([10, 500, 999]), cond).output


def test_save_and_reload_gives_the_same_model(toy_folder, tmp_path):
    first = ToyBackbone.from_pretrained(toy_folder)
    student = first.load_unet()
    with torch.no_grad():  # a student that has moved away from the teacher
        for p in student.parameters():
            p.add_(0.01)
    first.save_pipeline(student, tmp_path / "saved")
    again = ToyBackbone.from_pretrained(tmp_path / "saved")
    assert torch.equal(_call(first, student), _call(again, again.teacher_unet))
    assert not torch.equal(_call(first, first.teacher_unet), _call(again, again.teacher_unet))
    for name, t in first.world.tensors().items():
        assert torch.equal(t, again.world.tensors()[name]), name


def test_toy_exact_teaches_in_closed_form_and_starts_students_from_the_unet(toy_folder):
    b = ToyExactBackbone.from_pretrained(toy_folder)
    assert isinstance(b.teacher_unet, ExactDenoiser)
    assert b.base_unet is b.unet and not isinstance(b.load_unet(), ExactDenoiser)
    neural = ToyBackbone.from_pretrained(toy_folder)
    assert torch.equal(_call(b, b.base_unet), _call(neural, neural.teacher_unet))
    # the teacher call is the posterior mean, as ε
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300, 700])
    cond = b.encode_prompts(["a red circle", "a green triangle"], 8)
    pred = b.denoise(b.teacher_unet, x, t, cond)
    assert torch.allclose(pred.x0, b.exact.x0(x, t, cond.embeds), atol=1e-5)
    feats = b.features(b.base_unet, x, t, cond)
    assert len(feats.down) == 2 and feats.mid.shape[0] == 2
    with pytest.raises(NotImplementedError, match="closed form"):
        b.features(b.teacher_unet, x, t, cond)


def test_world_folder_has_no_neural_teacher(toy_world_folder):
    with pytest.raises(ModelLoadError, match="toy_exact"):
        ToyBackbone.from_pretrained(toy_world_folder)
    a = ToyExactBackbone.from_pretrained(toy_world_folder)
    b = ToyExactBackbone.from_pretrained(toy_world_folder)  # the untrained UNet is seeded: the same twice
    assert torch.equal(_call(a, a.base_unet), _call(b, b.base_unet))


def test_prompts_and_resolution(toy_folder):
    b = ToyBackbone.from_pretrained(toy_folder)
    world = read_world(toy_folder)
    cond = b.encode_prompts(["a blue square", ""], 8)
    assert torch.equal(cond.embeds[0], world.embeddings[1]) and not cond.embeds[1].any()
    assert torch.equal(b.empty_conditioning(3, 8).embeds, torch.zeros(3, *world.embeddings.shape[1:]))
    with pytest.raises(UsageError, match="a red circle"):  # the message lists the prompts the world knows
        b.encode_prompts(["a photo of a cat"], 8)
    with pytest.raises(UsageError, match="8x8"):
        b.sample_shape(2, 16)
    with pytest.raises(ModelLoadError, match="no distillkit_toy.json"):
        ToyBackbone.from_pretrained(toy_folder / "unet")


def test_recipe_problems_without_loading(toy_folder, toy_world_folder):
    from distillkit.recipe.schema import Recipe

    def problems(cls, folder, **data):
        recipe = Recipe.model_validate({
            "model": {"family": cls.family, "pretrained": str(folder)}, "losses": [{"name": "core.regression"}],
            "data": {"prompts": ["a red circle"], "resolution": 8, **data}, "student": {"input": "noise"},
            "sample": {"prompts": ["a red circle"]}})
        return {path for path, _ in cls.recipe_problems(recipe)}

    assert problems(ToyBackbone, toy_folder) == set()
    assert problems(ToyBackbone, toy_folder, resolution=16) == {"data.resolution"}
    assert problems(ToyBackbone, toy_world_folder) == {"model.family"}
    assert problems(ToyExactBackbone, toy_world_folder) == set()
    assert problems(ToyBackbone, toy_folder, prompts=["a cat"]) == {"data.prompts"}


def test_families_are_registered():
    from distillkit.registry import Registry

    reg = Registry.discover()
    assert reg.backbone("toy") is ToyBackbone and reg.backbone("toy_exact") is ToyExactBackbone
    assert "core.denoising" in reg.losses


def test_a_cross_section_problem_does_not_bring_default_prompts_into_the_report(toy_folder):
    # Caught before: with sample.steps out of range, the family's checks ran on a partial recipe that had the
    # default [sample] (SD prompts), so the report also said the recipe's sample prompts were not toy prompts.
    from distillkit.errors import RecipeError
    from distillkit.recipe import load_recipe

    data = {"model": {"family": "toy", "pretrained": str(toy_folder)}, "losses": [{"name": "core.regression"}],
            "data": {"prompts": ["a red circle"], "resolution": 8}, "student": {"input": "noise", "timesteps": [625]},
            "sample": {"prompts": ["a red circle"], "steps": [1, 4]}, "run": {"output_dir": str(toy_folder / "r")}}
    with pytest.raises(RecipeError) as info:
        load_recipe(data)
    assert [p.path for p in info.value.problems] == ["sample.steps"]
