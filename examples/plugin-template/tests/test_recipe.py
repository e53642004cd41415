"""The shipped recipe validates against the installed plugin, as ``distillkit validate`` would check it."""

from pathlib import Path

import pytest

from distillkit.errors import RecipeError
from distillkit.recipe import load_recipe
from distillkit.testing import write_shapes_dataset

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.toml"


def _load(tiny_sd15_path, tmp_path, *more):
    shapes = write_shapes_dataset(tmp_path / "shapes", n=4, size=64)
    return load_recipe(RECIPE, [f'model.pretrained="{tiny_sd15_path}"', f'data.images="{shapes}"',
                                f'run.output_dir="{tmp_path / "run"}"', *more])


def test_recipe_resolves_to_this_plugin(tiny_sd15_path, tmp_path):
    resolved = _load(tiny_sd15_path, tmp_path)
    assert [type(rl.config).__name__ for rl in resolved.losses] == ["AnchoredGANConfig"]
    assert resolved.losses[0].config.anchor_weight == 2.0
    assert [rc.config.body for rc in resolved.critics] == ["adapter"]


def test_a_bad_param_is_reported_by_name(tiny_sd15_path, tmp_path):
    with pytest.raises(RecipeError, match="t_min"):
        _load(tiny_sd15_path, tmp_path, "losses[0].params.t_min=950")
