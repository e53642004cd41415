"""What a run tells its user besides metrics.jsonl: skipped images (log, run.json, metrics) and the
experiment trackers of ``[log] report_to`` (TensorBoard through accelerate's tracker)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from distillkit import Engine
from distillkit.errors import RecipeError


def recipe(model, out, **sections) -> dict:
    r = {
        "run": {"name": "fb", "output_dir": str(out), "max_steps": 3, "checkpoint_every": 100, "sample_every": 0,
                "progress": False, "seed": 1},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-3}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
    }
    r.update(sections)
    return r


def test_skipped_images_are_logged_at_start_and_recorded_in_run_json_and_metrics(tiny_sd15_path, tmp_path, caplog):
    from distillkit.testing.shapes import write_shapes_dataset

    images = write_shapes_dataset(tmp_path / "shapes", n=4, size=40)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with open(images / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "broken.png", "text": "a broken file"}) + "\n")
    out = tmp_path / "run"
    data = {"images": str(images), "resolution": 32, "batch_size": 2}
    engine = Engine.from_recipe(recipe(tiny_sd15_path, out, data=data))
    with caplog.at_level("WARNING", logger="distillkit"):
        engine.fit(max_steps=2, export=False)
    assert "1 training images were skipped (1 unreadable image)" in caplog.text
    start = json.loads((out / "run.json").read_text())["starts"][-1]
    assert start["data"]["skipped_total"] == 1 and "broken.png" in start["data"]["skipped_examples"][0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and records[0]["skipped_images"] == 1
    assert [r["data/skipped"] for r in records if "event" not in r] == [1, 1]


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files under ``folder``, read record by record (TFRecord)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for f in folder.rglob("events.out.tfevents.*"):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_report_to_tensorboard_logs_every_logged_step(tiny_sd15_path, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    engine = Engine.from_recipe(recipe(tiny_sd15_path, out, log={"report_to": ["tensorboard"]}))
    engine.fit(export=False)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in logged if "event" not in r}
    scalars = _tensorboard_scalars(out / "logs" / "fb")
    mse = scalars["loss/core.regression/mse"]
    assert sorted(mse) == [1, 2, 3]
    assert all(mse[s] == pytest.approx(steps[s]["loss/core.regression/mse"], rel=1e-6) for s in mse)
    assert sorted(scalars["lr/student"]) == [1, 2, 3]


def test_a_tracker_without_its_package_is_one_message_before_any_model_loads(tiny_sd15_path, tmp_path, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    out = tmp_path / "run"
    engine = Engine.from_recipe(recipe(tiny_sd15_path, out, log={"report_to": ["wandb"]}))
    with pytest.raises(RecipeError, match="log.report_to: wandb needs a package that is not installed: pip install "
                                          "wandb"):
        engine.setup()
    assert not hasattr(engine, "backbone") and not out.exists()


def test_a_misspelt_tracker_is_a_recipe_problem_with_a_suggestion(tiny_sd15_path, tmp_path):
    from distillkit.recipe import load_recipe

    with pytest.raises(RecipeError, match="log.report_to\\[0\\]: must be one of .*did you mean 'tensorboard'"):
        load_recipe(recipe(tiny_sd15_path, tmp_path / "run", log={"report_to": ["tensorbaord"]}))
