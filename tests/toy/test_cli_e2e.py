"""teach, run, eval and compare end to end on a tiny toy world, through the command line a user types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillkit.cli import main

pytest.importorskip("distillkit_add")

TEACH = """
[run]
output_dir = "{out}"
max_steps = 2
checkpoint_every = 2
sample_every = 0
progress = false
[model]
family = "toy_exact"
pretrained = "{world}"
[student]
timesteps = [999]
[student.ema]
decay = 0.5
[data]
images = "{data}"
resolution = 8
batch_size = 8
[train]
device = "cpu"
[[losses]]
name = "core.denoising"
[sample]
prompts = ["a red circle"]
"""


def _write(path: Path, text: str, **fields) -> Path:
    path.write_text(text.format(**{k: str(v) for k, v in fields.items()}))
    return path


@pytest.fixture(scope="module")
def taught(tmp_path_factory, toy_world_folder, toy_data):
    root = tmp_path_factory.mktemp("teach")
    recipe = _write(root / "teach.toml", TEACH, out=root / "run", world=toy_world_folder, data=toy_data)
    assert main(["teach", str(recipe), "--out", str(root / "teacher"), "--per-prompt", "4",
                 "--reference-steps", "1", "2"]) == 0
    return root / "teacher"


def test_teach_writes_a_teacher_with_its_report(taught):
    from distillkit.toy.backbone import ToyBackbone

    backbone = ToyBackbone.from_pretrained(taught)  # the neural family loads it: it has trained weights
    assert backbone.family == "toy"
    report = json.loads((taught / "reference.json").read_text())
    assert [c["steps"] for c in report["neural"]["curve"]] == [1, 2]
    assert report["exact"]["protocol"]["per_prompt"] == 4
    err = report["denoiser_error"]
    assert len(err["t"]) == len(err["x0_mse"]) == len(err["x0_mse_uncond"]) > 5


def test_run_eval_compare(taught, toy_data, tmp_path):
    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "add"
    code = main(["run", str(root / "recipes" / "quickstart_add.toml"), "--set", f"model.pretrained={taught}",
                 "--set", f"data.images={toy_data}", "--set", "data.resolution=8", "--set", f"run.output_dir={run}",
                 "--set", "run.max_steps=2", "--set", "run.checkpoint_every=2", "--set", "run.sample_every=0",
                 "--set", "data.batch_size=4", "--set", "run.progress=false",
                 "--set", "student.timesteps=[625, 250]", "--set", "sample.steps=[1, 2]"])  # eval: two step counts
    assert code == 0
    assert main(["eval", str(run), "--per-prompt", "4"]) == 0
    record = json.loads((run / "eval" / "toy-4.json").read_text())
    assert [r["steps"] for r in record["results"]] == [1, 2]
    assert record["protocol"]["count"] == 16 and record["protocol"]["name"] == "toy-4"
    assert set(record["noise_floor"]) == {"fd", "mode_tv", "modes", "alignment", "precision"}
    assert record["budget"]["student_updates"] == 2 and record["method"] == "add.adversarial + add.distill"
    assert (run / "eval" / "toy-4-steps1.png").is_file()

    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--per-prompt", "4", "--teacher-steps", "1", "2", "--out", str(out)]) == 0
    csv = (out / "compare.csv").read_text().splitlines()
    assert csv[0].startswith("# protocol: toy-4")
    methods = [line.split(",")[0] for line in csv[2:]]
    assert methods.count("teacher (DDIM)") == 2 and methods.count("exact teacher (DDIM)") == 2
    assert methods.count(record["run"]) == 2 and methods[-1] == "noise floor (exact samples)"
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| method |" in (out / "compare.md").read_text()
