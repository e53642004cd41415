"""Run folders on the tiny SD1.5 fixture: damaged checkpoints, changed settings, the lock, a full disk.

One uninterrupted reference run (4 steps, a checkpoint every 2, EMA) is trained once per module. Each
damaged-checkpoint test copies its folder, damages ``step-00000004`` one way, and resumes: the resume
must skip the damaged checkpoint with a warning naming it, continue from step 2, and end with exactly the
reference's weights. The refusals must leave every file of the folder as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distillkit import Engine
from distillkit import checkpoint as fmt
from distillkit.errors import RunFolderError
from distillkit.engine.lock import RunLock


def recipe(model, out, **run) -> dict:
    return {
        "run": {"name": "rf", "output_dir": str(out), "max_steps": 4, "checkpoint_every": 2, "sample_every": 0,
                "progress": False, "seed": 3, **run},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-3}, "ema": {"decay": 0.9}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square", "a green triangle"], "resolution": 32,
                 "batch_size": 2},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
        "sample": {"prompts": ["a red circle"], "steps": [1]},
    }


def student(engine) -> dict:
    return {k: v.detach().clone() for k, v in engine.student.state_dict().items()}


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its content hash: what "nothing was changed" is checked against."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_sd15_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    engine = Engine.from_recipe(recipe(tiny_sd15_path, out))
    engine.fit(export=False)
    return out, student(engine), {k: v.clone() for k, v in engine.ema.shadow.items()}


@pytest.fixture
def copy_of(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    return out


def _rewrite_manifest(ckpt: Path) -> None:
    """As a buggy writer would: a manifest that matches the damaged files, so deeper checks must catch it."""
    (ckpt / fmt.MANIFEST).unlink()
    fmt.write_manifest(ckpt, int(ckpt.name.split("-")[1]))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _rename_optimizer_refs(ckpt: Path) -> None:
    f = ckpt / "optim-student.json"
    f.write_text(f.read_text().replace('{"__tensor__": "t', '{"__tensor__": "renamed'))


def _other_shapes(ckpt: Path) -> None:
    """A student checkpoint of a recipe whose model has other shapes: same names, one tensor narrower."""
    f = ckpt / "weights-student.safetensors"
    state = load_file(str(f))
    name = next(k for k, v in state.items() if v.dim() == 4)
    state[name] = state[name][: state[name].shape[0] // 2].clone()
    save_file(state, str(f))
    _rewrite_manifest(ckpt)


DAMAGE = {
    "truncated safetensors": lambda c: _truncate(c / "weights-student.safetensors"),
    "missing safetensors": lambda c: (c / "optim-student.safetensors").unlink(),
    "truncated state.json": lambda c: _truncate(c / fmt.STATE),
    "emptied state.json": lambda c: (c / fmt.STATE).write_text(""),
    "renamed optimiser refs": _rename_optimizer_refs,
    "renamed optimiser refs, manifest rewritten": lambda c: (_rename_optimizer_refs(c), _rewrite_manifest(c)),
    "tampered step": lambda c: (c / fmt.STATE).write_text(
        (c / fmt.STATE).read_text().replace('"step": 4', '"step": 1000000')),
    "tampered step, manifest rewritten": lambda c: ((c / fmt.STATE).write_text(
        (c / fmt.STATE).read_text().replace('"step": 4', '"step": 1000000')), _rewrite_manifest(c)),
    "other shapes": _other_shapes,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_and_ends_bit_identical(kind, tiny_sd15_path, reference, copy_of,
                                                                      caplog):
    bad = copy_of / "checkpoints" / "step-00000004"
    DAMAGE[kind](bad)
    engine = Engine.from_recipe(recipe(tiny_sd15_path, copy_of))
    with caplog.at_level("WARNING", logger="distillkit"):
        engine.setup()
    assert engine.global_step == 2
    assert f"checkpoint {bad} cannot be used" in caplog.text
    set_aside = copy_of / "checkpoints" / "rejected-step-00000004"
    assert set_aside.is_dir() and "resume could not use" in (set_aside / "REJECTED.txt").read_text()
    start = json.loads((copy_of / "run.json").read_text())["starts"][-1]
    assert start["resumed_from"]["step"] == 2 and start["rejected_checkpoints"][0]["checkpoint"] == str(bad)

    engine.fit(export=False)
    _, ref_student, ref_ema = reference
    got = student(engine)
    assert got.keys() == ref_student.keys() and all(torch.equal(got[k], ref_student[k]) for k in got)
    assert all(torch.equal(engine.ema.shadow[k], ref_ema[k]) for k in ref_ema)
    assert fmt.verify_checkpoint(bad) is None, "the re-trained step 4 is a good checkpoint again"


def test_no_usable_checkpoint_is_refused_and_changes_nothing(tiny_sd15_path, copy_of):
    for step in (2, 4):
        _truncate(copy_of / "checkpoints" / f"step-{step:08d}" / "weights-student.safetensors")
    before = snapshot(copy_of)
    with pytest.raises(RunFolderError, match="none of the 2 checkpoints") as err:
        Engine.from_recipe(recipe(tiny_sd15_path, copy_of)).setup()
    assert "step-00000002: weights-student.safetensors has" in str(err.value)
    assert snapshot(copy_of) == before


def test_resume_never_with_checkpoints_writes_nothing(tiny_sd15_path, copy_of):
    before = snapshot(copy_of)
    with pytest.raises(RunFolderError, match="run.resume = 'never'; nothing was overwritten"):
        Engine.from_recipe(recipe(tiny_sd15_path, copy_of, resume="never")).setup()
    assert snapshot(copy_of) == before


def test_a_changed_seed_is_refused_then_allowed_and_recorded(tiny_sd15_path, copy_of):
    before = snapshot(copy_of)
    changed = recipe(tiny_sd15_path, copy_of, seed=4, max_steps=5)
    with pytest.raises(RunFolderError, match="already holds a different run") as err:
        Engine.from_recipe(changed).setup()
    assert "run.seed: 3 -> 4" in str(err.value) and "run.max_steps" not in str(err.value)  # longer is fine
    assert snapshot(copy_of) == before

    engine = Engine.from_recipe(changed, allow_changes=True).setup()
    assert engine.global_step == 4
    starts = json.loads((copy_of / "run.json").read_text())["starts"]
    assert len(starts) == 2, "run.json keeps the first start"
    changes = {c["key"]: c for c in starts[-1]["changes"]}
    assert changes["run.seed"] == {"key": "run.seed", "old": 3, "new": 4, "needs_permission": True}
    assert changes["run.max_steps"]["needs_permission"] is False
    engine.close()


def test_any_change_is_found_once_recipe_toml_is_gone(tiny_sd15_path, copy_of):
    (copy_of / "recipe.toml").unlink()
    changed = recipe(tiny_sd15_path, copy_of)
    changed["student"]["optim"]["lr"] = 2e-3
    with pytest.raises(RunFolderError, match=r"student\.optim\.lr: 0\.001 -> 0\.002"):
        Engine.from_recipe(changed).setup()
    same = Engine.from_recipe(recipe(tiny_sd15_path, copy_of)).setup()  # the checkpoints' copy is the reference
    assert same.global_step == 4 and (copy_of / "recipe.toml").is_file()
    same.close()


def test_a_max_steps_below_the_step_reached_is_refused(tiny_sd15_path, copy_of):
    with pytest.raises(RunFolderError, match="run.max_steps: 4 -> 3 \\(below step 4, already reached\\)"):
        Engine.from_recipe(recipe(tiny_sd15_path, copy_of, max_steps=3)).setup()


def test_the_recipe_is_compared_before_the_first_checkpoint(tiny_sd15_path, tmp_path):
    out = tmp_path / "run"
    first = Engine.from_recipe(recipe(tiny_sd15_path, out)).setup()  # started, killed before a checkpoint
    first.close()
    assert (out / "recipe.toml").is_file() and not (out / "checkpoints").exists()
    before = snapshot(out)
    with pytest.raises(RunFolderError, match="run.seed: 3 -> 1"):
        Engine.from_recipe(recipe(tiny_sd15_path, out, seed=1)).setup()
    assert snapshot(out) == before


def test_a_second_engine_on_a_held_folder_is_refused_before_loading(tiny_sd15_path, copy_of):
    holder = RunLock(copy_of)
    holder.acquire()
    before = snapshot(copy_of)
    try:
        engine = Engine.from_recipe(recipe(tiny_sd15_path, copy_of))
        with pytest.raises(RunFolderError, match="is in use by process"):
            engine.setup()
        assert not hasattr(engine, "backbone"), "the models were loaded before the lock was checked"
        assert snapshot(copy_of) == before
    finally:
        holder.release()


def test_a_full_disk_during_a_checkpoint_is_one_message_and_resume_recovers(tiny_sd15_path, reference, tmp_path,
                                                                            monkeypatch):
    import distillkit.engine.state as state

    real_save, real_open, full = state.save_file, Path.open, []

    def save_until_full(tensors, path, *a, **k):
        if "step-00000004" in str(path):
            full.append(path)  # from here on every write fails, as on a real full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path, *a, **k)

    def open_until_full(self, mode="r", *a, **k):
        if full and any(c in mode for c in "wax"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *a, **k)

    out = tmp_path / "run"
    monkeypatch.setattr(state, "save_file", save_until_full)
    monkeypatch.setattr(Path, "open", open_until_full)
    with pytest.raises(RunFolderError) as err:
        Engine.from_recipe(recipe(tiny_sd15_path, out)).fit(export=False)
    msg = str(err.value)  # the checkpoint's message, not the end event's that failed after it
    assert "checkpoint step-00000004" in msg and "the disk is full" in msg
    assert "the last complete checkpoint is step-00000002" in msg
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"], "a partial write was left"
    monkeypatch.undo()

    resumed = Engine.from_recipe(recipe(tiny_sd15_path, out))
    resumed.fit(export=False)
    got, want = student(resumed), reference[1]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_cut_off_metrics_line_does_not_stop_the_next_run(tiny_sd15_path, copy_of):
    metrics = copy_of / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss/core.regre')  # killed mid-write
    engine = Engine.from_recipe(recipe(tiny_sd15_path, copy_of, max_steps=6, sample_every=6))
    engine.fit(export=False)  # reads the log to draw metrics.png at step 6
    lines = metrics.read_text().splitlines()
    assert '{"step": 5, "loss/core.regre' in lines
    good = [json.loads(line) for line in lines if line != '{"step": 5, "loss/core.regre']
    assert [r["step"] for r in good if "event" not in r][-2:] == [5, 6]
    assert (copy_of / "metrics.png").is_file()


def test_checkpoint_and_exported_weights_have_the_mode_of_every_other_file(tiny_sd15_path, tmp_path):
    out = tmp_path / "run"
    Engine.from_recipe(recipe(tiny_sd15_path, out, max_steps=2)).fit(samples=False)
    mode = (out / "recipe.toml").stat().st_mode & 0o777
    weights = list((out / "checkpoints").rglob("*.safetensors")) + list((out / "final").rglob("*.safetensors"))
    assert weights and {f.stat().st_mode & 0o777 for f in weights} == {mode}
    assert not (out / "run.lock").exists(), "fit() released the folder"


def test_fit_releases_the_folder_and_a_stale_engine_cannot_write_into_it_again(tiny_sd15_path, tmp_path):
    out = tmp_path / "run"
    first = Engine.from_recipe(recipe(tiny_sd15_path, out, max_steps=2))
    first.fit(export=False)
    assert not (out / "run.lock").exists()
    second = Engine.from_recipe(recipe(tiny_sd15_path, out))  # the folder is free for the next start
    second.fit(export=False)
    assert second.global_step == 4
    with pytest.raises(RunFolderError, match="has moved on to step 4 since this engine \\(at step 2\\)"):
        first.step()
    assert fmt.latest_checkpoint(out / "checkpoints").name == "step-00000004"


def test_sampling_a_run_folder_skips_a_damaged_newest_checkpoint(copy_of, caplog):
    """``distillkit sample RUN`` (no final/) loads the newest *intact* checkpoint, as a resume would; a
    damaged checkpoint named directly is refused with the reason, not sampled."""
    from distillkit.errors import ModelLoadError
    from distillkit.inference import load_student

    shutil.rmtree(copy_of / "final", ignore_errors=True)
    ckpts = copy_of / "checkpoints"
    good, bad = ckpts / "step-00000002", ckpts / "step-00000004"
    _truncate(bad / fmt.weights_file("student"))
    with caplog.at_level("WARNING", logger="distillkit"):
        _, loaded, _ = load_student(copy_of, use_ema=False)
    assert "step-00000004" in caplog.text
    expected = load_file(good / fmt.weights_file("student"))
    got = {k: v for k, v in loaded.unet.module.state_dict().items() if k in expected}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(ModelLoadError, match="step-00000004.*cannot be trusted"):
        load_student(bad)
