"""Every kind of bad recipe input gets one clear problem naming its field, and all of a recipe's problems come
in one error.

Each row is a malformed recipe (a dict edit, ``--set`` values or a whole file) and the complete list of
problems it must produce, as (field path, key words): a missing problem, an extra one, a wrong path or a
vaguer message fails the row. The registry is the core's own (model families ``sd15``/``sdxl``/``pixel``,
``core.regression``) plus a small plugin with a critic and a loss that trains it.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch

import distillkit
from distillkit import builtin
from distillkit.errors import RecipeError
from distillkit.recipe import load_recipe


def _not_run(self, ctx):
    raise AssertionError("losses are not run in these tests")


class Disc(distillkit.Critic):
    name = "disc"


class Adversarial(distillkit.Loss):
    name = "adversarial"
    critic = "gan.disc"
    generator_loss = critic_loss = _not_run


class GanPlugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        register(Adversarial)

    @distillkit.hookimpl
    def register_critics(self, register):
        register(Disc)


@pytest.fixture(scope="module")
def registry():
    core = types.SimpleNamespace(register_losses=builtin.register_losses,
                                 register_backbones=builtin.register_backbones)
    reg = distillkit.Registry.discover(extra_plugins={"core": core, "gan": GanPlugin()}, autoload=False)
    assert not reg.problems
    return reg


def base(tmp: Path) -> dict:
    return {"run": {"output_dir": str(tmp / "runs" / "{name}")},
            "model": {"family": "sd15", "pretrained": "org/teacher"},
            "data": {"images": "imgs", "resolution": 64},
            "train": {"device": "cpu"},
            "losses": [{"name": "core.regression"}]}


def write_model_folder(root: Path, *, unet_blocks=2, vae_blocks=4, train_timesteps=1000) -> Path:
    """Only the config files a diffusers folder has: enough for the checks that need no model."""
    for sub, name, config in (("unet", "config.json", {"block_out_channels": [32] * unet_blocks}),
                              ("vae", "config.json", {"block_out_channels": [8] * vae_blocks}),
                              ("scheduler", "scheduler_config.json", {"num_train_timesteps": train_timesteps})):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_text(json.dumps(config))
    return root


def at(path: str, value):
    """An edit setting ``path`` (dots; ``[i]`` after a key) to ``value``; ``value`` may take the tmp folder."""
    def change(data, tmp):
        node, keys = data, path.replace("[", ".").replace("]", "").split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        v = value(tmp) if callable(value) else value
        if isinstance(node, list):
            node[int(keys[-1])] = v
        else:
            node[keys[-1]] = v
    return change


def drop(path: str):
    def change(data, tmp):
        node, keys = data, path.split(".")
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return change


def local_model(**kw):
    return at("model.pretrained", lambda tmp: str(write_model_folder(tmp / "model", **kw)))


def a_file(tmp: Path) -> Path:
    f = tmp / "notes.txt"
    f.write_text("x")
    return f


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")

# (id, edits: --set strings and/or functions (data, tmp), [(path, [key words]), ...] = every problem expected)
CASES = [
    # -- non-finite numbers, everywhere in the schema
    ("nan-weight", ["losses[0].weight=nan"], [("losses[0].weight", ["must be a finite number", "(got nan)"])]),
    ("inf-weight", ["losses[0].weight=inf"], [("losses[0].weight", ["must be a finite number", "(got inf)"])]),
    ("minus-inf-critic-weight", ["losses[0].critic_weight=-inf"],
     [("losses[0].critic_weight", ["must be a finite number", "(got -inf)"])]),
    ("nan-in-a-weight-ramp", ["losses[0].weight={start = nan, end = 1.0, to_step = 5}"],
     [("losses[0].weight.start", ["must be a finite number"])]),
    ("inf-guidance", ["teacher.guidance_scale=inf"], [("teacher.guidance_scale", ["must be a finite number"])]),
    ("lr-1e400-reads-as-inf", ["student.optim.lr=1e400"],
     [("student.optim.lr", ["must be a finite number", "(got inf)", "beyond about 1.8e308"])]),
    ("nan-beta", ["student.optim.betas=[nan, 0.9]"], [("student.optim.betas[0]", ["must be a finite number"])]),
    ("inf-max-time", ["run.max_time=inf"], [("run.max_time", ["must be a finite number"])]),
    # -- strict types: nothing is converted from a string
    ("lr-as-a-string", ['student.optim.lr="1e-4"'],
     [("student.optim.lr", ["must be a valid number", "(got '1e-4')", "write a number without quotes"])]),
    ("int-as-a-string", ['run.max_steps="10"'],
     [("run.max_steps", ["valid integer", "write a number without quotes"])]),
    ("bool-as-a-string", ['run.progress="true"'], [("run.progress", ["valid boolean", "write true or false"])]),
    ("bool-as-a-number", ["student.optim.lr=true"], [("student.optim.lr", ["must be a valid number", "(got True)"])]),
    ("float-for-an-int", ["run.seed=1.0"], [("run.seed", ["valid integer", "(got 1.0)", "write a whole number"])]),
    # -- names
    ("empty-loss-name", ['losses[0].name=""'], [("losses[0].name", ["must not be empty"])]),
    ("empty-critic-name", ['critics=[{name = ""}]'], [("critics[0].name", ["must not be empty"])]),
    ("misspelt-loss", ["losses[0].name=core.regresion"],
     [("losses[0].name", ["unknown loss 'core.regresion'", "did you mean 'core.regression'?"])]),
    ("unknown-plugin", ["losses[0].name=nosuch.loss"],
     [("losses[0].name", ["unknown loss 'nosuch.loss'", "no plugin 'nosuch' is installed"])]),
    ("path-as-a-loss-name", ["losses[0].name=plugins/gan/losses.py"],
     [("losses[0].name", ["'plugins/gan/losses.py' looks like a file path", "distillkit plugins",
                          "known: core.", "gan.adversarial)"])]),
    ("critic-used-as-a-loss", ["losses[0].name=gan.disc"],
     [("losses[0].name", ["'gan.disc' is a critic, not a loss", '[[critics]] name = "gan.disc"',
                          'add a loss that trains it, e.g. [[losses]] name = "gan.adversarial"'])]),
    ("loss-used-as-a-critic", ['critics=[{name = "gan.adversarial"}]'],
     [("critics[0].name", ["'gan.adversarial' is a loss, not a critic", '[[losses]] name = "gan.adversarial"'])]),
    ("family-used-as-a-loss", ["losses[0].name=sd15"],
     [("losses[0].name", ["'sd15' is a model family, not a loss", 'model.family = "sd15"'])]),
    ("unknown-family", ["model.family=sd16"], [("model.family", ["unknown model family 'sd16'", "did you mean"])]),
    # -- missing keys come with an example line
    ("missing-pretrained", [drop("model.pretrained")],
     [("model.pretrained", ['missing required key, e.g. pretrained = "runs/fixtures/sd15"',
                            "taken from the working directory"])]),
    ("missing-family", [drop("model.family")], [("model.family", ['missing required key, e.g. family = "sd15"'])]),
    ("missing-data", [drop("data")], [("data", ['missing required key, e.g. [data] with images = "runs/fixtures'])]),
    ("missing-losses", [drop("losses")],
     [("losses", ['missing required key, e.g. [[losses]] with name = "core.regression"'])]),
    ("missing-ramp-end", ["losses[0].weight={start = 1.0, to_step = 5}"],
     [("losses[0].weight.end", ["missing required key, e.g. end = 1.0"])]),
    # -- checks that need no model
    ("no-sample-prompts", ["sample.prompts=[]"], [("sample.prompts", ["at least 1 entry", "sample grids need"])]),
    ("timestep-past-a-1000-step-schedule", ["student.timesteps=[1000, 500]"],
     [("student.timesteps", ["[1000] past the end of the teacher's 1000-step training schedule", "valid: 0..999",
                             "not a local folder"])]),
    ("timestep-past-a-local-schedule", [local_model(train_timesteps=500), "student.timesteps=[999, 499]"],
     [("student.timesteps", ["[999] past the end of the teacher's 500-step", "scheduler_config.json"])]),
    ("resolution-vs-vae-and-unet", [local_model(unet_blocks=3), "data.resolution=100"],
     [("data.resolution", ["100 is not a multiple of 32", "8x in its VAE and 4x in its UNet's 2 downsampling steps",
                           "use e.g. 96"])]),
    ("pixel-resolution", [local_model(unet_blocks=2), "model.family=pixel", "data.resolution=63"],
     [("data.resolution", ["63 is not a multiple of 2", "2x in its UNet's 1 downsampling step;", "use e.g. 64"])]),
    ("device-banana", ["train.device=banana"], [("train.device", ["'banana' is not a device", "'cpu' or 'cuda'"])]),
    ("cuda-without-gpu", ["train.device=cuda"],
     [("train.device", ["'cuda', but this machine has no CUDA GPU", "use 'cpu'"])]),
    ("fp16-on-cpu", ["train.mixed_precision=fp16"],
     [("train.mixed_precision", ["'fp16' needs a GPU", "train.device = 'cpu'", "use 'bf16' or 'no'"])]),
    ("resume-latest", ["run.resume=latest"],
     [("run.resume", ["'latest' is neither 'auto' nor 'never'", "did you mean 'auto'", "working directory"])]),
    ("resume-no", ["run.resume=no"], [("run.resume", ["did you mean 'never'"])]),
    ("resume-path-missing", [at("run.resume", lambda tmp: str(tmp / "runs" / "x" / "checkpoints" / "step-5"))],
     [("run.resume", ["does not exist", "checkpoints/step-*"])]),
    # -- the output folder
    ("unknown-placeholder", ["run.output_dir=runs/{nmae}"],
     [("run.output_dir", ["unknown placeholder '{nmae}'", "the only placeholder is {name}"])]),
    ("lone-open-brace", ["run.output_dir=runs/{name"], [("run.output_dir", ["a lone '{' or '}'", "{{"])]),
    ("lone-close-brace", ["run.output_dir=runs/}x"], [("run.output_dir", ["a lone '{' or '}'"])]),
    ("empty-placeholder", ["run.output_dir=runs/{}"], [("run.output_dir", ["unknown placeholder '{}'"])]),
    ("output-dir-is-a-file", [at("run.output_dir", lambda tmp: str(a_file(tmp)))],
     [("run.output_dir", ["is an existing file, not a folder", "choose another run.output_dir"])]),
    ("output-dir-under-a-file", [at("run.output_dir", lambda tmp: str(a_file(tmp) / "run"))],
     [("run.output_dir", ["cannot be created", "notes.txt' is a file"])]),
    ("relative-output-dir-under-a-file", [lambda d, tmp: os.chdir(tmp), lambda d, tmp: a_file(tmp),
                                          "run.output_dir=notes.txt/{name}"],
     [("run.output_dir", ["'notes.txt/distill' cannot be created",
                          f"a relative path is taken from the working directory"])]),
    # -- phase weights
    ("critic-weight-on-a-loss-without-a-critic-term", ["losses[0].critic_weight=2.0"],
     [("losses[0].critic_weight", ["'core.regression' has no critic term", "no effect"])]),
    # -- several problems of different stages, all in one error
    ("missing-model-beside-stage-2-problems",
     [drop("model"), "losses[0].name=core.regresion", "losses[0].weight=nan", "train.device=banana",
      "run.output_dir=runs/{x}"],
     [("model", ["missing required key", 'family = "sd15"']), ("losses[0].weight", ["finite"]),
      ("losses[0].name", ["did you mean 'core.regression'"]), ("train.device", ["'banana' is not a device"]),
      ("run.output_dir", ["unknown placeholder '{x}'"])]),
    ("cross-check-beside-stage-2-problems",
     ["sample.steps=[9]", 'critics=[{name = "gan.dsic"}]', "losses[0].name=gan.adversarial"],
     [("sample.steps", ["[9] out of range"]), ("critics[0].name", ["unknown critic 'gan.dsic'", "'gan.disc'"]),
      ("losses[0]", ["needs a critic of type 'gan.disc'"])]),
    ("model-folder-problems-beside-a-stage-1-problem",
     [local_model(unet_blocks=3), "data.resolution=48", "student.timesteps=[1000]", "run.seed=x"],
     [("run.seed", ["valid integer"]), ("data.resolution", ["48 is not a multiple of 32"]),
      ("student.timesteps", ["[1000] past the end"])]),
    ("every-bad-set-at-once", ["run.seed 3", "losses[4].weight=1", "=2"],
     [("--set 'run.seed 3'", ["expected KEY=VALUE"]), ("--set 'losses[4].weight=1'", ["index 4 is out of range"]),
      ("--set '=2'", ["nothing before '='"])]),
]


def _apply(data, edits, tmp):
    sets = []
    for edit in edits:
        if callable(edit):
            edit(data, tmp)
        else:
            sets.append(edit)
    return sets


MARKS = {"cuda-without-gpu": [NO_GPU]}


@pytest.mark.parametrize("edits, expected", [pytest.param(*c[1:], id=c[0], marks=MARKS.get(c[0], ())) for c in CASES])
def test_bad_input_gives_every_problem_with_its_field(registry, tmp_path, monkeypatch, edits, expected):
    monkeypatch.chdir(Path.cwd())  # a row may change into its tmp folder; put it back afterwards
    data = base(tmp_path)
    sets = _apply(data, edits, tmp_path)
    with pytest.raises(RecipeError) as info:
        load_recipe(data, sets, registry=registry)
    problems = info.value.problems
    assert sorted(p.path for p in problems) == sorted(path for path, _ in expected), problems
    for path, words in expected:
        assert any(p.path == path and all(w in p.message for w in words) for p in problems), (path, words, problems)
    assert all("\n" not in p for p in problems)


def test_there_are_enough_rows():
    assert len(CASES) >= 40


def test_the_base_recipe_and_a_good_local_model_folder_pass(registry, tmp_path):
    data = base(tmp_path)
    data["model"]["pretrained"] = str(write_model_folder(tmp_path / "model", unet_blocks=3))
    data["data"]["resolution"] = 96
    data["student"] = {"timesteps": [999, 499]}
    load_recipe(data, registry=registry)


def test_the_real_tiny_model_folder_is_read(registry, tmp_path, tiny_sd15_path):
    """The config file names and keys are the ones diffusers writes (the tiny UNet has 2 blocks: factor 16)."""
    data = base(tmp_path)
    data["model"]["pretrained"] = str(tiny_sd15_path)
    load_recipe(data, registry=registry)
    with pytest.raises(RecipeError) as info:
        load_recipe(data, ["data.resolution=40"], registry=registry)
    [problem] = info.value.problems
    assert problem.path == "data.resolution" and "40 is not a multiple of 16" in problem.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_that_cannot_be_written(registry, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RecipeError) as info:
            load_recipe(base(tmp_path), [f"run.output_dir={locked}/run"], registry=registry)
    finally:
        locked.chmod(0o700)
    [problem] = info.value.problems
    assert problem.path == "run.output_dir" and "is not writable" in problem.message
    assert not (locked / "run").exists()


def test_environment_checks_can_be_skipped_for_a_recipe_from_another_machine(registry, tmp_path):
    """A run folder's recipe.toml from a GPU machine, read back on a laptop to sample it."""
    sets = ["train.mixed_precision=fp16", f"run.output_dir={a_file(tmp_path)}", "run.resume=elsewhere/step-5"]
    with pytest.raises(RecipeError):
        load_recipe(base(tmp_path), sets, registry=registry)
    load_recipe(base(tmp_path), sets, registry=registry, check_environment=False)
    with pytest.raises(RecipeError, match="'banana' is not a device"):  # a value that is wrong anywhere
        load_recipe(base(tmp_path), ["train.device=banana"], registry=registry, check_environment=False)


# -- whole files ---------------------------------------------------------------------------------------------
GOOD_TOML = ('[model]\nfamily = "sd15"\npretrained = "org/teacher"\n[data]\nimages = "imgs"\nresolution = 64\n'
             '[train]\ndevice = "cpu"\n[[losses]]\nname = "core.regression"\n')


def test_a_recipe_saved_with_a_byte_order_mark_loads(registry, tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_TOML.encode())
    assert load_recipe(path, registry=registry).recipe.model.family == "sd15"


FILES = [
    ("yaml", "model:\n  family: sd15\n  pretrained: org/teacher\nlosses:\n  - name: core.regression\n",
     ["this looks like YAML; recipes are TOML", '[model]', 'family = "sd15"', "'key = value'"]),
    ("yaml-document-start", "---\nmodel: {family: sd15}\n", ["this looks like YAML"]),
    ("json", json.dumps({"model": {"family": "sd15"}, "losses": [{"name": "core.regression"}]}, indent=2),
     ["this looks like JSON; recipes are TOML", '[model]']),
    ("broken-toml-is-still-toml", GOOD_TOML.replace('family = "sd15"', "family sd15"),
     [":2:8: TOML syntax error", "in: family sd15"]),
]


@pytest.mark.parametrize("text, words", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_a_file_in_another_format_says_which(registry, tmp_path, text, words):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=registry)
    [problem] = info.value.problems
    assert problem.path.startswith(str(path)) and all(w in problem for w in words), problem


def test_a_missing_relative_recipe_file_names_the_working_directory(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        load_recipe("recipes/nope.toml", registry=registry)
    [problem] = info.value.problems
    assert problem.path == "recipes/nope.toml" and str(tmp_path) in problem.message
