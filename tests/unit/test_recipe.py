"""Recipe loading: every malformed recipe is reported with its path, the bad value and the fix, all at once.

Stage-2 tests use a registry built from a fake plugin (a toy family, losses with and without critics, two
critic types) plus the core's own ``register_losses`` hook, so no model module is imported.
"""

from __future__ import annotations

import copy
import pickle
import tomllib
import types
from pathlib import Path
from typing import Literal

import pydantic
import pytest

import distillkit
from distillkit import builtin
from distillkit.errors import RecipeError
from distillkit.models.backbone import Backbone
from distillkit.recipe import (
    Problem, Recipe, ResolvedRecipe, apply_overrides, dump_recipe, dump_resolved, load_recipe, read_toml,
    validate_structure,
)

# -- a fake plugin --------------------------------------------------------------------------------


class ToyBackbone(Backbone):
    family = "toy"


def _not_run(self, ctx):  # resolution only looks at which phases a loss overrides
    raise AssertionError("losses are not run in these tests")


class PlainLoss(distillkit.Loss):
    name = "plain"
    generator_loss = _not_run

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        scale: float = pydantic.Field(1.0, gt=0)
        mode: Literal["a", "b"] = "a"


class AdversarialLoss(distillkit.Loss):
    name = "adversarial"
    critic = "fake.disc"
    needs_real_data = True
    generator_loss = critic_loss = _not_run


class ScoreLoss(distillkit.Loss):
    name = "score"
    critic = "fake.score"
    generator_loss = critic_loss = _not_run


class Disc(distillkit.Critic):
    name = "disc"

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        layers: int = pydantic.Field(2, ge=1)
        weights: str | None = None

    @classmethod
    def check_assets(cls, config):
        if config.weights and not Path(config.weights).exists():
            return [f"feature network weights not found at {config.weights}"]
        return []


class Score(distillkit.Critic):
    name = "score"


class FakePlugin:
    @distillkit.hookimpl
    def register_backbones(self, register):
        register(ToyBackbone)

    @distillkit.hookimpl
    def register_losses(self, register):
        for cls in (PlainLoss, AdversarialLoss, ScoreLoss):
            register(cls)

    @distillkit.hookimpl
    def register_critics(self, register):
        register(Disc)
        register(Score)


@pytest.fixture(scope="module")
def registry():
    core = types.SimpleNamespace(register_losses=builtin.register_losses)  # core.regression, no model imports
    reg = distillkit.Registry.discover(extra_plugins={"core": core, "fake": FakePlugin()}, autoload=False)
    assert not reg.problems
    return reg


def base() -> dict:
    return {"model": {"family": "toy", "pretrained": "tiny/teacher"},
            "data": {"images": "imgs"},
            "losses": [{"name": "core.regression"}]}


def problems_of(data: dict, registry, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(data, overrides, registry=registry)
    return info.value.problems


# -- the happy path ---------------------------------------------------------------------------------


def test_minimal_recipe_passes_both_stages(registry):
    resolved = load_recipe(base(), registry=registry)
    assert isinstance(resolved, ResolvedRecipe)
    assert resolved.backbone_cls is ToyBackbone
    assert resolved.recipe.run.max_steps == 1000  # defaults filled in
    [loss] = resolved.losses
    assert loss.cls is builtin.TeacherRegression and loss.config.space == "latent" and loss.critic_id is None
    assert resolved.critics == [] and resolved.warnings == []
    assert resolved.source is None and resolved.base_dir == Path.cwd()


def test_critics_are_bound_and_params_validated(registry, tmp_path):
    data = base()
    data["critics"] = [{"name": "fake.disc", "params": {"layers": 3}}, {"name": "fake.score", "id": "fake_score"}]
    data["losses"] = [{"name": "fake.adversarial", "weight": 0.5},
                      {"name": "fake.score"},
                      {"name": "fake.plain", "params": {"scale": 2.5, "mode": "b"}}]
    resolved = load_recipe(data, registry=registry, base_dir=tmp_path)
    assert [(rl.cls, rl.critic_id) for rl in resolved.losses] == [
        (AdversarialLoss, "disc"), (ScoreLoss, "fake_score"), (PlainLoss, None)]
    assert resolved.losses[2].config == PlainLoss.Config(scale=2.5, mode="b")
    assert [(rc.cls, rc.id) for rc in resolved.critics] == [(Disc, "disc"), (Score, "fake_score")]
    assert resolved.critics[0].config == Disc.Config(layers=3)
    assert resolved.critic("fake_score").cls is Score
    assert resolved.base_dir == tmp_path


def test_disabled_losses_are_dropped_with_the_critics_only_they_used(registry, tmp_path):
    data = base()
    data["critics"] = [{"name": "fake.disc", "params": {"weights": str(tmp_path / "gone.pt")}},
                       {"name": "fake.score"}]
    data["losses"] = [{"name": "fake.adversarial", "enabled": False}, {"name": "fake.score"},
                      {"name": "fake.score", "enabled": False, "weight": 3.0}, {"name": "core.regression"}]
    resolved = load_recipe(data, registry=registry)
    assert [(rl.cls, rl.critic_id, rl.entry.weight) for rl in resolved.losses] == [
        (ScoreLoss, "score", 1.0), (builtin.TeacherRegression, None, 1.0)]
    # 'disc' only served a disabled loss: dropped, not "unused", and its missing file is no warning (never built)
    assert [rc.id for rc in resolved.critics] == ["score"] and resolved.warnings == []
    # a disabled critic no loss needs is dropped too, where an enabled one would be reported as unused
    data["losses"] = [{"name": "core.regression"}]
    data["critics"][1]["enabled"] = False
    assert problems_of(data, registry) == ["critics[0]: critic 'disc' is not used by any loss: remove it, or add "
                                           "a loss that trains it"]
    data["critics"][0]["enabled"] = False
    assert load_recipe(data, registry=registry).critics == []


def test_disabling_one_loss_is_a_single_override(registry):
    data = base()
    data["critics"] = [{"name": "fake.disc"}]
    data["losses"] = [{"name": "fake.adversarial"}, {"name": "core.regression", "weight": 2.5}]
    only_regression = load_recipe(data, ["losses[0].enabled=false"], registry=registry)
    assert [rl.entry.name for rl in only_regression.losses] == ["core.regression"] and only_regression.critics == []
    only_adversarial = load_recipe(data, ["losses[1].enabled=false"], registry=registry)
    assert [rl.entry.name for rl in only_adversarial.losses] == ["fake.adversarial"]
    assert [rc.id for rc in only_adversarial.critics] == ["disc"]


def test_asset_problems_are_warnings_not_errors(registry, tmp_path):
    data = base()
    data["critics"] = [{"name": "fake.disc", "params": {"weights": str(tmp_path / "dino.pt")}}]
    data["losses"] = [{"name": "fake.adversarial"}]
    resolved = load_recipe(data, registry=registry)
    assert resolved.warnings == [f"critics[0] (fake.disc): feature network weights not found at {tmp_path / 'dino.pt'}"]


def test_file_source_sets_base_dir(registry, tmp_path):
    path = tmp_path / "sub" / "r.toml"
    path.parent.mkdir()
    path.write_text('[model]\nfamily = "toy"\npretrained = "t"\n[data]\nimages = "imgs"\n'
                    '[[losses]]\nname = "core.regression"\nweight = 2\n')
    resolved = load_recipe(path, ["losses[0].weight=0.25"], registry=registry)
    assert resolved.source == path and resolved.base_dir == path.parent.resolve()
    assert resolved.recipe.losses[0].weight == 0.25


# -- one malformed recipe per row -------------------------------------------------------------------


def _drop(*path):
    def change(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


def _set(path, value):
    def change(d):
        node = d
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return change


def _critics(*entries):
    return _set("critics", list(entries))


def _losses(*entries):
    return _set("losses", list(entries))


def _both(*changes):
    def change(d):
        for c in changes:
            c(d)
    return change


# (id, change: --set strings or a function editing the dict, phrases every one of which must be in one problem)
MALFORMED = [
    ("unknown-key-did-you-mean", ["student.optim.lerning_rate=1e-4"],
     ["student.optim.lerning_rate: unknown key 'lerning_rate'", "(got 0.0001)", "did you mean 'lr'?"]),
    ("unknown-key-in-list-entry", ["losses[0].wieght=2"],
     ["losses[0].wieght: unknown key 'wieght'", "did you mean 'weight'?"]),
    ("unknown-section-lists-allowed", ["bogus.x=1"],
     ["bogus: unknown key 'bogus'", "allowed keys in the top level: run, model, student,"]),
    ("wrong-type", ["run.max_steps=lots"],
     ["run.max_steps: must be a valid integer", "(got 'lots')", "write a number without quotes"]),
    ("fractional-int", ["run.max_steps=1.5"], ["run.max_steps:", "(got 1.5)", "write a whole number"]),
    ("bool", ["run.progress=maybe"], ["run.progress:", "(got 'maybe')", "write true or false"]),
    ("negative-lr", ["student.optim.lr=-1e-5"], ["student.optim.lr: must be > 0 (got -1e-05)"]),
    ("negative-weight-decay", ["student.optim.weight_decay=-0.1"],
     ["student.optim.weight_decay: must be >= 0 (got -0.1)"]),
    ("timesteps-not-decreasing", ["student.timesteps=[249, 499, 999]"],
     ["student.timesteps: must be strictly decreasing (noisiest first)", "[249, 499, 999]"]),
    ("literal-with-suggestion", ["model.dtype=fp16"],
     ["model.dtype: must be one of 'float32', 'float16', 'bfloat16' (got 'fp16'); did you mean 'float16'?"]),
    ("missing-key", _drop("model", "pretrained"),
     ["model.pretrained: missing required key, e.g. pretrained = \"runs/fixtures/sd15\"",
      "hub id or local diffusers folder", "taken from the working directory"]),
    ("missing-section", _drop("model"),
     ["model: missing required key, e.g. [model] with family = \"sd15\", pretrained = \"runs/fixtures/sd15\""]),
    ("section-not-a-table", ["student=5"], ["student: must be a table (got 5)", "keys: timesteps, init,"]),
    ("no-losses", ["losses=[]"], ["losses: must have at least 1 entry", 'add a [[losses]] table']),
    ("weight-neither-number-nor-table", ["losses[0].weight=heavy"],
     ["losses[0].weight: must be a number or a table with keys start, end, from_step, to_step (got 'heavy')"]),
    ("weight-schedule-missing-key", ["losses[0].weight={start = 1.0, end = 0.0}"],
     ["losses[0].weight.to_step: missing required key"]),
    ("weight-schedule-order", ["losses[0].weight={start = 1.0, end = 0.0, from_step = 10, to_step = 5}"],
     ["losses[0].weight: to_step must be greater than from_step"]),
    ("two-data-sources", ["data.dataset=org/pets"], ["data: give either data.images or data.dataset, not both"]),
    ("no-data", _set("data", {}), ["data: no training data: set data.prompts"]),
    ("real-input-without-images", _set("data", {"prompts": ["a cat"]}),
     ["student.input: 'real' needs images: set data.images or data.dataset, or use student.input = 'noise'"]),
    ("sample-steps-too-large", ["sample.steps=[1, 8]"],
     ["sample.steps: [8] out of range: the student has 4 timesteps", "1 to 4 steps"]),
    ("duplicate-critic-ids", _both(_critics({"name": "fake.disc"}, {"name": "fake.disc"}),
                                   _losses({"name": "fake.adversarial"})),
     ["critics[1]: id 'disc' is already used by critics[0]: give each [[critics]] entry a distinct id"]),
    ("duplicate-explicit-critic-ids",
     _both(_critics({"name": "fake.disc", "id": "d"}, {"name": "fake.score", "id": "d"}),
           _losses({"name": "fake.adversarial"})),
     ["critics[1].id: id 'd' is already used by critics[0]"]),
    ("critic-id-unknown", _both(_critics({"name": "fake.disc"}), _losses({"name": "fake.adversarial", "critic": "d"})),
     ["losses[0].critic: no critic with id 'd'", "['disc']"]),
    ("critic-id-unknown-on-a-disabled-loss",
     _both(_critics({"name": "fake.disc"}),
           _losses({"name": "fake.adversarial", "critic": "d", "enabled": False}, {"name": "core.regression"})),
     ["losses[0].critic: no critic with id 'd'", "['disc']"]),
    ("every-loss-disabled", ["losses[0].enabled=false"],
     ["losses: every entry has enabled = false, so nothing would train: enable at least one"]),
    ("disabled-loss-params-still-checked",
     _losses({"name": "fake.plain", "enabled": False, "params": {"scale": -2}}, {"name": "core.regression"}),
     ["losses[0].params.scale: must be > 0 (got -2)"]),
    ("disabled-critic-params-still-checked", _critics({"name": "fake.disc", "enabled": False, "params": {"layers": 0}}),
     ["critics[0].params.layers: must be >= 1 (got 0)"]),
    ("disabled-critic-needed-by-an-enabled-loss",
     _both(_critics({"name": "fake.disc", "enabled": False}), _losses({"name": "fake.adversarial"})),
     ["losses[0]: 'fake.adversarial' trains against critics[0] ('disc'), which has enabled = false: enable that "
      "critic or set losses[0].enabled = false"]),
    ("value-truncated", ["model.dtype=" + "x" * 200], ["model.dtype: must be one of", "(got 'xxxxxxxx", "...)"]),
    # -- stage 2 --
    ("unknown-family", ["model.family=tyo"], ["model.family: unknown model family 'tyo'; did you mean 'toy'?"]),
    ("unknown-loss-suggestion", ["losses[0].name=fake.plian"],
     ["losses[0].name: unknown loss 'fake.plian'; did you mean 'fake.plain'?"]),
    ("unknown-plugin", ["losses[0].name=nosuch.loss"],
     ["losses[0].name: unknown loss 'nosuch.loss'; no plugin 'nosuch' is installed"]),
    ("bad-loss-param-value", ["losses[0].name=fake.plain", "losses[0].params.scale=-2"],
     ["losses[0].params.scale: must be > 0 (got -2)"]),
    ("unknown-loss-param", ["losses[0].name=fake.plain", "losses[0].params.scael=2"],
     ["losses[0].params.scael: unknown key 'scael'", "did you mean 'scale'?"]),
    ("bad-loss-param-literal", ["losses[0].name=fake.plain", "losses[0].params.mode=c"],
     ["losses[0].params.mode: must be one of 'a', 'b' (got 'c')"]),
    ("params-on-a-loss-without-params", ["losses[0].name=fake.score", "losses[0].params.x=1"],
     ["losses[0].params.x: unknown key 'x'"]),
    ("missing-critic", ["losses[0].name=fake.adversarial"],
     ["losses[0]: 'fake.adversarial' needs a critic of type 'fake.disc': add [[critics]] name = \"fake.disc\""]),
    ("ambiguous-critic", _both(_critics({"name": "fake.disc", "id": "d1"}, {"name": "fake.disc", "id": "d2"}),
                               _losses({"name": "fake.adversarial"})),
     ["losses[0]: 'fake.adversarial' could use any of 2 critics of type 'fake.disc' (ids 'd1', 'd2')",
      "set losses[0].critic to one of them"]),
    ("critic-of-wrong-type", _both(_critics({"name": "fake.disc"}, {"name": "fake.score"}),
                                   _losses({"name": "fake.adversarial", "critic": "score"},
                                           {"name": "fake.score"}, {"name": "fake.adversarial", "critic": "disc"})),
     ["losses[0].critic: critic 'score' is a 'fake.score', but losses[0] (fake.adversarial) needs a 'fake.disc'"]),
    ("unused-critic", _critics({"name": "fake.score"}),
     ["critics[0]: critic 'score' is not used by any loss", "remove it"]),
    ("critic-on-a-loss-without-one", _both(_critics({"name": "fake.disc"}),
                                           _losses({"name": "core.regression", "critic": "disc"},
                                                   {"name": "fake.adversarial"})),
     ["losses[0].critic: 'core.regression' uses no critic; remove losses[0].critic"]),
    ("needs-real-data", _both(_set("data", {"prompts": ["a cat"]}), _set("student.input", "noise"),
                              _critics({"name": "fake.disc"}), _losses({"name": "fake.adversarial"})),
     ["losses[0]: 'fake.adversarial' needs real images: set data.images or data.dataset"]),
    ("unknown-critic", _both(_critics({"name": "fake.dsic"}), _losses({"name": "fake.adversarial"})),
     ["critics[0].name: unknown critic 'fake.dsic'; did you mean 'fake.disc'?"]),
    ("bad-critic-param", _both(_critics({"name": "fake.disc", "params": {"layers": 0}}),
                               _losses({"name": "fake.adversarial"})),
     ["critics[0].params.layers: must be >= 1 (got 0)"]),
]


@pytest.mark.parametrize("change, phrases", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_recipe_names_path_value_and_fix(registry, change, phrases):
    data = base()
    if callable(change):
        change(data)
    else:
        data = apply_overrides(data, change)
    problems = problems_of(data, registry)
    assert any(all(p in line for p in phrases) for line in problems), problems
    assert all("\n" not in line for line in problems)


def test_long_values_are_truncated(registry):
    [line] = problems_of(base(), registry, ["model.dtype=" + "x" * 200])
    got = line[line.index("(got "):line.index(")", line.index("(got "))]
    assert len(got) <= len("(got ") + 60


def test_all_stage1_problems_reported_together(registry):
    data = apply_overrides(base(), ["student.optim.lerning_rate=1", "run.max_steps=0", "model.dtype=fp8",
                                    "student.timesteps=[1, 2]", "losses[0].weight=x", "sample.steps=[9]"])
    data["data"] = {"prompts": ["a"]}
    problems = problems_of(data, registry)
    expected = ["student.optim.lerning_rate: unknown key", "run.max_steps: must be >= 1 (got 0)",
                "model.dtype: must be one of", "student.timesteps: must be strictly decreasing",
                "losses[0].weight: must be a number or a table"]
    for phrase in expected:
        assert sum(phrase in line for line in problems) == 1, (phrase, problems)
    assert len(problems) == len(expected)  # a field-level error stops the cross checks of the whole recipe


def test_cross_checks_are_structured_problems(registry):
    data = base()
    data["data"] = {"prompts": ["a"]}
    data["sample"] = {"steps": [9]}
    data["critics"] = [{"name": "fake.disc", "id": "x; y"}, {"name": "fake.disc", "id": "x; y"}]
    problems = problems_of(data, registry)
    assert [p.path for p in problems] == ["student.input", "critics[1].id", "sample.steps"], problems
    assert problems[0].message.startswith("'real' needs images")
    assert problems[1].message.startswith("id 'x; y' is already used by critics[0]")  # not split at its '; '

    assert problems[2].message.startswith("[9] out of range")
    assert all(isinstance(p, Problem) and str(p) == f"{p.path}: {p.message}" for p in problems)


def test_all_stage2_problems_reported_together(registry):
    data = base()
    data["model"]["family"] = "sd99"
    data["critics"] = [{"name": "fake.score"}, {"name": "fake.disc", "params": {"layers": "many"}}]
    data["losses"] = [{"name": "fake.adversarial"}, {"name": "fake.plain", "params": {"scale": 0}}]
    problems = problems_of(data, registry)
    assert len(problems) == 4, problems
    assert problems[0].startswith("model.family: unknown model family 'sd99'")
    assert problems[1].startswith("critics[1].params.layers: must be a valid integer")
    assert problems[2] == "losses[1].params.scale: must be > 0 (got 0)"
    assert problems[3].startswith("critics[0]: critic 'score' is not used by any loss")


def test_stage2_runs_beside_stage1_problems(registry):
    problems = problems_of(base(), registry, ["model.family=nope", "run.seed=x"])
    assert [p.path for p in problems] == ["run.seed", "model.family"], problems
    assert "unknown model family 'nope'" in problems[1]


def test_unknown_loss_does_not_blame_its_critic(registry):
    data = base()
    data["critics"] = [{"name": "fake.disc"}]
    data["losses"] = [{"name": "fake.adversarail"}]
    problems = problems_of(data, registry)
    assert problems == [problems[0]] and "did you mean 'fake.adversarial'?" in problems[0]


def test_error_names_the_source_file(registry, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\nfamily = "toy"\npretrained = "t"\ndtype = "fp32"\n[data]\nimages = "i"\n'
                    '[[losses]]\nname = "core.regression"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=registry)
    assert info.value.source == str(path) and f"1 problem(s) in {path}" in str(info.value)


class BrokenPlugin:
    @distillkit.hookimpl
    def register_backbones(self, register):
        import distillkit_no_such_module  # noqa: F401

    @distillkit.hookimpl
    def register_losses(self, register):
        raise RuntimeError("bad loss table")


def test_registration_failures_explain_unknown_names_only(registry):
    core = types.SimpleNamespace(register_losses=builtin.register_losses)
    reg = distillkit.Registry.discover(extra_plugins={"core": core, "fake": FakePlugin(), "broken": BrokenPlugin()},
                                       autoload=False)
    assert load_recipe(base(), registry=reg).warnings == []  # a broken plugin the recipe does not use is harmless
    problems = problems_of(base(), reg, ["model.family=sd15", "losses[0].name=broken.x"])
    assert problems[0].startswith("model.family: unknown model family 'sd15'")
    assert "plugin 'broken' failed in its backbone registration: ModuleNotFoundError" in problems[0]
    assert problems[1].startswith("losses[0].name: unknown loss 'broken.x'")
    assert problems[1].endswith("plugin 'broken' failed in its loss registration: RuntimeError: bad loss table")
    assert "backbone" not in problems[1]


# -- reading TOML -----------------------------------------------------------------------------------


def test_toml_syntax_error_gives_file_line_and_column(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[run]\nname = "x"\nmax_steps 5\n')
    with pytest.raises(RecipeError) as info:
        read_toml(path)
    [line] = info.value.problems
    assert line.startswith(f"{path}:3:11: TOML syntax error: Expected '=' after a key in a key/value pair")
    assert "max_steps 5" in line and info.value.source == str(path)


def test_toml_error_without_position(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("a = [1,\n")
    with pytest.raises(RecipeError, match="TOML syntax error: Invalid value"):
        read_toml(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        read_toml(tmp_path / "nope.toml")


# -- --set ------------------------------------------------------------------------------------------

SETS = [
    ("student.optim.lr=1e-5", ("student", "optim", "lr"), 1e-5),
    ("run.progress=false", ("run", "progress"), False),
    ("student.timesteps=[999, 499]", ("student", "timesteps"), [999, 499]),
    ('run.name="two words"', ("run", "name"), "two words"),
    ("run.name=two words", ("run", "name"), "two words"),
    ("model.pretrained=runs/x/final", ("model", "pretrained"), "runs/x/final"),
    ("model.family=sd15", ("model", "family"), "sd15"),
    ("losses.0.weight=2.5", ("losses", 0, "weight"), 2.5),
    ("losses[0].weight=2.5", ("losses", 0, "weight"), 2.5),
    ("student.lora={rank = 4}", ("student", "lora"), {"rank": 4}),
    ("student.ema.decay=0.99", ("student", "ema", "decay"), 0.99),
    ("  run.seed =  7 ", ("run", "seed"), 7),
    ("run.name=a=b", ("run", "name"), "a=b"),
    ('data.prompts=""', ("data", "prompts"), ""),
    ("student.timesteps[1]=500", ("student", "timesteps"), [999, 500, 499, 249]),
    ("student.timesteps.1=500", ("student", "timesteps"), [999, 500, 499, 249]),
    ('run.name="x"\nseed = 1', ("run", "name"), '"x"\nseed = 1'),
]


@pytest.mark.parametrize("override, path, value", SETS, ids=[s[0] for s in SETS])
def test_set_parses_values(override, path, value):
    data = base()
    data["student"] = {"timesteps": [999, 749, 499, 249]}
    before = copy.deepcopy(data)
    out = apply_overrides(data, [override])
    node = out
    for key in path:
        node = node[key]
    assert node == value and type(node) is type(value)
    assert data == before  # the input is not modified


def test_set_with_an_empty_value_removes_the_key_so_the_default_applies():
    data = base()
    data["data"]["images"] = "some/folder"
    out = apply_overrides(data, ["data.images=", "run.not_there="])
    assert "images" not in out["data"] and "not_there" not in out["run"]
    with pytest.raises(RecipeError, match=r"removes a key, but student\.timesteps\[0\] is a list entry"):
        apply_overrides({"student": {"timesteps": [1]}}, ["student.timesteps[0]="])


def test_set_later_override_wins():
    assert apply_overrides(base(), ["run.seed=1", "run.seed=2"])["run"]["seed"] == 2


BAD_SETS = [
    ("run.seed 3", ["--set 'run.seed 3': expected KEY=VALUE", "e.g. --set student.optim.lr=1e-5"]),
    ("=3", ["--set '=3': nothing before '='"]),
    ("a..b=1", ["--set 'a..b=1': malformed key 'a..b'", "losses[0].weight=2.5"]),
    ("losses[x].weight=1", ["malformed key 'losses[x].weight'"]),
    ("losses[3].weight=1", ["--set 'losses[3].weight=1': index 3 is out of range for losses, which has 1 entry "
                            "(valid: 0..0)", "add the entry to the recipe file first"]),
    ("losses.1.weight=1", ["index 1 is out of range for losses"]),
    ("model[0].family=x", ["--set 'model[0].family=x': model is a table, not a list, so it cannot be indexed "
                           "with [0]"]),
    ("model.family.x=1", ["model.family is a str ('toy'), not a table, so it has no key 'x'"]),
    ("critics[0].name=x", ["critics is not in the recipe, so it cannot be indexed"]),
    ("run.1=x", ["run is not in the recipe, so it cannot be indexed"]),
]


@pytest.mark.parametrize("override, phrases", BAD_SETS, ids=[b[0] for b in BAD_SETS])
def test_bad_set_names_override_and_fix(override, phrases):
    with pytest.raises(RecipeError) as info:
        apply_overrides(base(), [override])
    [line] = info.value.problems
    assert all(p in line for p in phrases), line


def test_bad_sets_reported_together_with_the_recipe_as_source(registry, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\nfamily = "toy"\npretrained = "t"\n[data]\nimages = "i"\n'
                    '[[losses]]\nname = "core.regression"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["nope", "losses[5].weight=1", "run.seed=3"], registry=registry)
    assert len(info.value.problems) == 2 and info.value.source == str(path)


# -- dump_recipe ------------------------------------------------------------------------------------


def rich_recipe() -> dict:
    return {
        "run": {"name": "round trip", "max_steps": 20, "output_dir": "C:\\runs\\{name}"},
        "model": {"family": "toy", "pretrained": "org/model", "variant": "fp16", "dtype": "bfloat16"},
        "student": {"timesteps": [999, 499], "lora": {"rank": 4, "alpha": 8.0, "target_modules": ["to_q"]},
                    "ema": {"decay": 0.95}, "optim": {"lr": 1e-5, "betas": [0.0, 0.99], "grad_clip": 0.5}},
        "teacher": {"guidance_scale": -1.5},
        "data": {"images": "imgs", "resolution": 64},
        "critics": [{"name": "fake.disc", "id": "d", "params": {"layers": 3, "weights": "w.pt"},
                     "optim": {"lr": 2e-4}}],
        "losses": [{"name": "fake.adversarial", "critic": "d",
                    "weight": {"start": 0.0, "end": 2.5, "from_step": 2, "to_step": 10}},
                   {"name": "fake.plain", "weight": 0.1, "params": {"scale": 3.0, "mode": "b"}}],
        "sample": {"prompts": ['a "quoted" cat', "tab\there", "line\nbreak", "ünïcødé ✓", "back\\slash",
                               "del\x7f"],
                   "steps": [1, 2]},
    }


def test_dump_round_trips_to_an_equal_recipe(registry, tmp_path):
    recipe = load_recipe(rich_recipe(), registry=registry).recipe
    text = dump_recipe(recipe)
    assert "max_steps = 20" in text and "keep_checkpoints = 3" in text  # defaults are written out
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    again = validate_structure(read_toml(path))
    assert again == recipe
    assert load_recipe(path, registry=registry).recipe == recipe


def test_dump_of_defaults_round_trips():
    recipe = validate_structure(base())
    assert validate_structure(tomllib.loads(dump_recipe(recipe))) == recipe
    assert isinstance(recipe, Recipe)


def test_dump_writes_nested_params_and_quoted_keys():
    data = base()
    data["losses"][0]["params"] = {"nested": {"k": [1, 2]}, "odd key": True, "items": [{"a": 1}, {"b": "x"}],
                                   "mixed": [[1, 2], {"c": 1.5}],
                                   "when": tomllib.loads("d = 2024-01-02T03:04:05Z")["d"]}
    recipe = validate_structure(data)
    assert validate_structure(tomllib.loads(dump_recipe(recipe))) == recipe


def test_failed_bindings_do_not_also_report_their_critics_as_unused(registry):
    data = base()
    data["critics"] = [{"name": "fake.disc", "id": "d1"}, {"name": "fake.disc", "id": "d2"}]
    data["losses"] = [{"name": "fake.adversarial"}]
    assert len(problems_of(data, registry)) == 1  # ambiguous: both were candidates
    data["critics"] = [{"name": "fake.dsic"}]
    problems = problems_of(data, registry)
    assert not any("not used" in p for p in problems), problems


def test_a_second_critic_of_a_type_is_unused_once_one_is_named(registry):
    data = base()
    data["critics"] = [{"name": "fake.disc", "id": "d1"}, {"name": "fake.disc", "id": "d2"}]
    data["losses"] = [{"name": "fake.adversarial", "critic": "d1"}]
    assert problems_of(data, registry) == [
        "critics[1]: critic 'd2' is not used by any loss: remove it, or add a loss that trains it"]


# -- dump_resolved: plugin params defaults too --------------------------------------------------------


def test_resolved_dump_fills_in_plugin_params_defaults_and_round_trips(registry, tmp_path):
    data = rich_recipe()
    data["losses"].append({"name": "fake.plain", "enabled": False, "params": {"mode": "b"}})
    resolved = load_recipe(data, registry=registry)
    text = dump_resolved(resolved)
    written = tomllib.loads(text)
    assert written["critics"][0]["params"] == {"layers": 3, "weights": "w.pt"}  # as given, nothing to fill
    assert written["losses"][0]["params"] == {}  # AdversarialLoss takes no params
    assert written["losses"][1]["params"] == {"scale": 3.0, "mode": "b"}
    assert written["losses"][2]["params"] == {"mode": "b"}  # disabled: checked, but written as given
    data["losses"][1]["params"] = {"mode": "b"}  # scale left to its default
    text = dump_resolved(load_recipe(data, registry=registry))
    assert tomllib.loads(text)["losses"][1]["params"] == {"scale": 1.0, "mode": "b"}
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    again = load_recipe(path, registry=registry)
    original = load_recipe(data, registry=registry)
    assert [(rl.entry.name, rl.config, rl.critic_ids) for rl in again.losses] == [
        (rl.entry.name, rl.config, rl.critic_ids) for rl in original.losses]
    assert [(rc.id, rc.config) for rc in again.critics] == [(rc.id, rc.config) for rc in original.critics]
    assert dump_resolved(again) == text


def test_problem_is_its_line_and_survives_copies():
    p = Problem("losses[0].weight", "must be a finite number (got nan)")
    assert p == "losses[0].weight: must be a finite number (got nan)" and str(p) == p
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert (q.path, q.message, type(q)) == (p.path, p.message, Problem)
    assert Problem("", "whole recipe") == "whole recipe"
