"""The command line as a user meets it: exit codes, messages, files written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


def run_cli(*args, env=None, cwd=None):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distillkit", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory, tiny_sd15_path, tiny_sdxl_path):
    from distillkit.testing.shapes import write_shapes_dataset

    root = tmp_path_factory.mktemp("cli_fixtures")
    write_shapes_dataset(root / "shapes", n=8, size=64)
    return {"sd15": tiny_sd15_path, "sdxl": tiny_sdxl_path, "shapes": root / "shapes"}


def test_plugins_lists_builtins_and_survives_a_broken_plugin(tmp_path):
    dist = tmp_path / "distillkit_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: distillkit-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[distillkit]\nbroken = distillkit_no_such_module\n")
    res = run_cli("plugins", env={"PYTHONPATH": str(tmp_path), "COLUMNS": "250"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name, dist_name in [("core", "distillkit"), ("add", "distillkit-add"), ("sid", "distillkit-sid"),
                            ("sds", "distillkit-sds")]:
        assert name in out and dist_name in out
    assert "add.adversarial" in out and "add.distill" in out and "add.discriminator" in out
    assert "core.regression" in out and "sd15" in out and "sdxl" in out
    assert "broken" in out and "failed to import" in out and "ModuleNotFoundError" in out


MALFORMED_RECIPE = ('[run]\nmax_stesp = 10\n[model]\nfamily = "sd15"\npretrained = "x"\n'
                    '[student]\ntimesteps = [249, 999]\n[data]\nprompts = ["a"]\n'
                    '[[losses]]\nname = "core.regresion"\n')


def test_validate_reports_every_problem_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(MALFORMED_RECIPE)
    code = main(["validate", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "run.max_stesp" in err and "max_steps" in err
    assert "student.timesteps" in err and "strictly decreasing" in err


def test_a_malformed_recipe_prints_no_traceback_through_the_real_entry_point(tmp_path):
    # In-process, an uncaught exception would propagate rather than print, so only a subprocess shows
    # what a user sees on the terminal.
    bad = tmp_path / "bad.toml"
    bad.write_text(MALFORMED_RECIPE)
    res = run_cli("validate", str(bad))
    assert res.returncode == 2, res.stderr
    assert "run.max_stesp" in res.stderr and "Traceback" not in res.stderr


def test_validate_unknown_loss_suggests_the_closest_name(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nfamily = "sd15"\npretrained = "x"\n[data]\nprompts = ["a"]\n'
                   '[student]\ninput = "noise"\n[[losses]]\nname = "add.adversarail"\n')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "losses[0].name" in err and "did you mean 'add.adversarial'" in err


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(recipe, fixtures_dir, capsys):
    import tomllib

    model = tomllib.loads(recipe.read_text()).get("model", {})
    if model.get("family") in ("toy", "toy_exact"):  # the toy world's model folders ship in the repository
        pretrained = ROOT / model["pretrained"]
    else:
        pretrained = fixtures_dir["sdxl" if "sdxl" in recipe.stem else "sd15"]
    code = main(["validate", str(recipe), "--set", f"model.pretrained={pretrained}",
                 "--set", f"data.images={fixtures_dir['shapes']}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "valid" in captured.out


def test_run_then_sample_end_to_end(fixtures_dir, tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", str(ROOT / "recipes" / "tiny_cpu.toml"), "--set", f"model.pretrained={fixtures_dir['sd15']}",
                  "--set", f"data.images={fixtures_dir['shapes']}", "--set", f"run.output_dir={out}",
                  "--set", "run.max_steps=4", "--set", "run.checkpoint_every=2", "--set", "run.sample_every=4",
                  "--set", "data.batch_size=2", "--set", "data.resolution=32")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "samples" / "step-00000004.png").exists()
    png = tmp_path / "grid.png"
    res = run_cli("sample", str(out), "--prompt", "a red circle", "--prompt", "a blue square", "--steps", "1",
                  "--steps", "4", "--out", str(png))
    assert res.returncode == 0, res.stderr[-3000:]
    from PIL import Image

    with Image.open(png) as im:
        width, height = im.size  # 2 prompts × (1, 4) steps of 32 px, 2 px padding, label margins
        assert height == 16 + 2 * 32 + 3 * 2 and width > 2 * 32 + 3 * 2


def test_run_with_missing_model_folder_is_one_clear_error(tmp_path, fixtures_dir, capsys):
    code = main(["run", str(ROOT / "recipes" / "tiny_cpu.toml"), "--set", f"model.pretrained={tmp_path}/nope",
                 "--set", f"run.output_dir={tmp_path}/out", "--set", f"data.images={fixtures_dir['shapes']}"])
    err = capsys.readouterr().err
    assert code == 3 and f"{tmp_path}/nope" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.fixture(scope="module")
def tiny_run(tiny_sd15_path, tmp_path_factory):
    """A finished one-step data-free run of a 2-timestep student (the engine's quickest real output)."""
    from distillkit import Engine

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    recipe = {
        "run": {"name": "t", "output_dir": str(out), "max_steps": 1, "checkpoint_every": 1, "sample_every": 0,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [999, 499], "input": "noise"},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
        "sample": {"prompts": ["a red circle"], "steps": [1]},
    }
    assert Engine.from_recipe(recipe).setup().fit() == "completed"
    return out


def test_sample_steps_outside_the_students_timesteps_is_a_usage_error(tiny_run, tmp_path, capsys):
    png = tmp_path / "grid.png"
    for steps in ("0", "3", "-1"):  # 0 used to mean "all" silently; 3 > the 2 timesteps was a traceback
        code = main(["sample", str(tiny_run), "--prompt", "a red circle", "--steps", "1", "--steps", steps,
                     "--device", "cpu", "--out", str(png)])
        err = capsys.readouterr().err
        assert code == 2, err
        [line] = err.strip().splitlines()
        assert f"--steps {steps}:" in line and "has 2 timestep(s) [999, 499]" in line, line
        assert "between 1 and 2" in line and not png.exists()
    assert main(["sample", str(tiny_run), "--prompt", "a red circle", "--steps", "1", "--steps", "2",
                 "--device", "cpu", "--out", str(png)]) == 0
    assert png.is_file()
