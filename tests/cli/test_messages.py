"""Messages keep their text: brackets in user input survive, nothing the user types can crash the printer,
``--debug`` adds the traceback, and `sample`'s bad arguments are messages with exit code 2, not tracebacks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distillkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "tiny_cpu.toml")


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at the terminal width; keep each message on one line


# -- escaping ---------------------------------------------------------------------------------------


def test_a_closing_tag_in_a_set_key_is_a_message_not_a_markup_error(capsys):
    # Caught before: rich read "[/x]" as a closing tag and raised MarkupError while printing the error.
    code = main(["validate", TINY, "--set", "run.[/x]=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--set 'run.[/x]=1'" in err and "Traceback" not in err


def test_brackets_in_user_values_survive_in_errors(capsys):
    # Caught before: "[bold]" was taken as a style and vanished, so the message named 'fam'.
    code = main(["validate", TINY, "--set", 'model.family="[bold]fam"'])
    err = capsys.readouterr().err
    assert code == 2 and "'[bold]fam'" in err


def test_brackets_in_a_recipe_path_survive_in_the_summary_table(tmp_path, capsys):
    recipe = tmp_path / "[red]" / "r[bold].toml"
    recipe.parent.mkdir()
    shutil.copy(TINY, recipe)
    assert main(["validate", str(recipe)]) == 0
    assert f"{recipe}: valid" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback_of_a_user_error(where, capsys):
    args = ["validate", TINY, "--set", "run.max_steps=-3"]
    assert main(args) == 2
    plain = capsys.readouterr().err
    assert main(["--debug", *args] if where == "before" else [*args, "--debug"]) == 2
    debug = capsys.readouterr().err
    assert "Traceback" not in plain and "run.max_steps" in plain
    assert "Traceback (most recent call last)" in debug and "RecipeError" in debug and "run.max_steps" in debug


# -- sample: arguments checked before the model loads ----------------------------------------------


def test_sample_from_a_path_that_does_not_exist_is_a_file_error(tmp_path, capsys):
    code = main(["sample", str(tmp_path / "no-run"), "--prompt", "a", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 3 and f"{tmp_path / 'no-run'} does not exist" in err


def test_sample_out_that_is_a_folder_is_refused(tmp_path, capsys):
    code = main(["sample", str(tmp_path), "--prompt", "a", "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "that is a folder" in err and str(tmp_path / "sample.png") in err


def test_sample_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["sample", str(tmp_path), "--prompt", "a", "--out", str(tmp_path / "file" / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'file'} is a file" in err


def test_sample_out_without_an_image_suffix_is_refused(tmp_path, capsys):
    code = main(["sample", str(tmp_path), "--prompt", "a", "--out", str(tmp_path / "grid")])
    assert code == 2 and ".png" in capsys.readouterr().err


def test_sample_on_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["sample", str(tmp_path), "--prompt", "a", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda: no CUDA GPU" in err and "--device cpu" in err


def test_sample_on_a_device_that_does_not_exist_is_refused(tmp_path, capsys):
    code = main(["sample", str(tmp_path), "--prompt", "a", "--device", "banana"])
    assert code == 2 and "--device 'banana' is not a device" in capsys.readouterr().err


# -- sample: the resolution, checked against the loaded model ---------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_sd15_path, tmp_path_factory):
    """A finished one-step data-free run of the tiny SD1.5 fixture."""
    from distillkit import Engine

    out = tmp_path_factory.mktemp("tiny_run_messages") / "run"
    recipe = {
        "run": {"name": "t", "output_dir": str(out), "max_steps": 1, "checkpoint_every": 1, "sample_every": 0,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(tiny_sd15_path)},
        "student": {"timesteps": [999], "input": "noise"},
        "data": {"prompts": ["a red circle"], "resolution": 32, "batch_size": 1},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
        "sample": {"prompts": ["a red circle"], "steps": [1]},
    }
    assert Engine.from_recipe(recipe).setup().fit() == "completed"
    return out


def test_sample_resolution_the_model_cannot_make_is_refused_with_the_nearest_sizes(tiny_run, tiny_sd15_path,
                                                                                    tmp_path, capsys):
    # Caught before: 60 px silently gave 56 px images. The multiple is the fixture's own: the VAE's 8x
    # times 2 per UNet downsampling (one fewer than its blocks).
    blocks = json.loads((tiny_sd15_path / "unet" / "config.json").read_text())["block_out_channels"]
    multiple = 8 * 2 ** (len(blocks) - 1)
    png = tmp_path / "g.png"
    bad = 3 * multiple - 4
    code = main(["sample", str(tiny_run), "--prompt", "a", "--resolution", str(bad), "--out", str(png),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not png.exists()
    assert f"--resolution {bad}:" in err and f"multiple of {multiple} px" in err
    assert f"use {2 * multiple} or {3 * multiple}" in err
    assert main(["sample", str(tiny_run), "--prompt", "a", "--resolution", str(2 * multiple), "--out", str(png),
                 "--device", "cpu"]) == 0
    assert png.is_file()
