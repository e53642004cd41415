"""Two processes (gloo on CPU) through `accelerate launch` compute exactly what one process computes.

One launch runs two steps of ADD (student + discriminator), of SiD (student + full fake score), of
data-free `core.regression` (with EMA) and
of the same with the student sharded (`train.sharding = "zero3"`, FSDP2 per UNet block) on 2 processes,
batch 1 each, writing a checkpoint after step 1. Then, in this process:

* 1 process with the same global batch (batch 1, 2 accumulation steps) from scratch must end each step
  with the same weights, critic buffers and gradient norm (float tolerance) — which holds only if
  gradients are averaged over processes, each micro-batch's random draws depend on its place in the
  global batch rather than on the process, and accumulation restarts each micro-batch from the same
  buffers as a separate process would;
* the 2-process checkpoint resumed under 1 process must reproduce the 2-process step 2.

Adam's eps is 1e-4 here: with the default 1e-8 the first update is lr·g/(|g| + eps) ≈ lr·sign(g), so an
element whose gradient is ~1e-9 flips by 2·lr on float noise (summation order, thread count) and the
comparison of weights would measure that noise instead of the gradients.

(`--cpu --num_processes 2` silently runs one process, so the launch uses --multi_gpu, which falls back
to gloo without CUDA.)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from safetensors.torch import save_file
    from distillkit import Engine

    from distillkit.engine.sharding import consolidated

    def weights(engine):
        trained, critics, ema = consolidated(engine.trained, engine.critics, engine.ema)  # gathers shards
        out = {}
        for name, t in trained.items():
            state = critics[name].trainable_state_dict() if t.kind == "critic" else t.state_dict()
            out.update({f"{name}/{k}": v.detach().float().contiguous().clone() for k, v in state.items()})
        if ema is not None:
            out.update({f"ema/{k}": v.clone() for k, v in ema.state_dict().items()})
        return out

    for recipe in json.load(open(sys.argv[1])):
        engine = Engine.from_recipe(recipe)
        out, rank = recipe["run"]["output_dir"], engine.accelerator.process_index
        norms = []
        for k in (1, 2):
            metrics = engine.step()
            norms.append({m: v for m, v in metrics.items() if m.startswith("grad_norm/")})
            save_file(weights(engine), f"{out}/weights-{k}-rank{rank}.safetensors")
        if recipe["train"].get("sharding"):  # resumed under sharding too: restored, then re-sharded
            again = dict(recipe, run={**recipe["run"], "output_dir": out + "-resumed",
                                      "resume": out + "/checkpoints/step-00000001"})
            resumed = Engine.from_recipe(again, allow_changes=True)
            resumed.step()
            save_file(weights(resumed), f"{out}/weights-2-resumed-rank{rank}.safetensors")
        if engine.is_main:
            json.dump({"world": engine.accelerator.num_processes, "norms": norms, "sharded": engine.sharded,
                       "prompts": engine.data.batch(0)["prompts"]}, open(out + "/mp.json", "w"))
    engine.accelerator.end_training()
''')


def regression_recipe(model, out):
    return {
        "run": {"output_dir": str(out), "max_steps": 2, "checkpoint_every": 1, "sample_every": 0,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-3, "eps": 1e-4}, "ema": {"decay": 0.9}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square", "a green triangle", "a yellow circle"],
                 "resolution": 32, "batch_size": 1},
        "train": {"device": "cpu"},
        "losses": [{"name": "core.regression"}],
    }


def add_recipe(model, images, out):
    return {
        "run": {"output_dir": str(out), "max_steps": 2, "checkpoint_every": 1, "sample_every": 0,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "real",
                    "optim": {"lr": 1e-4, "betas": [0.0, 0.99], "eps": 1e-4}},
        "teacher": {"guidance_scale": 3.0},
        "data": {"images": str(images), "resolution": 64, "batch_size": 1},
        "train": {"device": "cpu"},
        "critics": [{"name": "add.discriminator", "optim": {"lr": 2e-4, "betas": [0.0, 0.99], "eps": 1e-4},
                     "params": {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same",
                                "crop_prob": 0.0}}],
        "losses": [{"name": "add.adversarial"}, {"name": "add.distill", "weight": 2.5}],
    }


def sid_recipe(model, out):
    """SiD as recipes/sid_sd15.toml trains it (one-step generator from σ·z at t = 625, a full fake score
    updated first, a fresh student sample in the generator phase), on the tiny model. At the start SiD's
    gradient is a difference of two nearly identical networks (fake score and teacher), mostly float noise
    in many elements; Adam with a small eps would turn that noise into lr-sized steps (the same process
    with 1 and 2 threads then differs by 25 % of a step), so eps = 1 makes each update proportional to its
    gradient, and the comparison measures the gradients."""
    return {
        "run": {"output_dir": str(out), "max_steps": 2, "checkpoint_every": 1, "sample_every": 0,
                "progress": False},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [625], "input": "noise", "first_input": "sigma_noise",
                    "optim": {"lr": 1e-2, "betas": [0.0, 0.999], "eps": 1.0, "grad_clip": 0.0}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square", "a green triangle", "a yellow circle"],
                 "resolution": 32, "batch_size": 1},
        "train": {"device": "cpu", "generator_sample": "fresh"},
        "critics": [{"name": "core.fake_score", "id": "fake_score",
                     "optim": {"lr": 1e-2, "betas": [0.0, 0.999], "eps": 1.0, "grad_clip": 0.0}}],
        "losses": [{"name": "sid.sid"}],
    }


def one_process(recipe: dict, out, **changes) -> dict:
    """The same recipe on this (single) process, global batch kept: batch 1 x 2 accumulation steps (a
    changed setting for a resumed run, hence ``allow_changes``: the global batch is what must not change)."""
    from distillkit import Engine

    r = copy.deepcopy(recipe)
    r["run"].update(output_dir=str(out), checkpoint_every=100, **changes)
    r["train"]["gradient_accumulation_steps"] = 2
    return r, Engine.from_recipe(r, allow_changes=True)


def weights(engine) -> dict:
    out = {}
    for name, t in engine.trained.items():
        state = engine.critics[name].trainable_state_dict() if t.kind == "critic" else t.state_dict()
        out.update({f"{name}/{k}": v.detach().float().clone() for k, v in state.items()})
    if engine.ema is not None:
        out.update({f"ema/{k}": v.clone() for k, v in engine.ema.state_dict().items()})
    return out


def group(name: str) -> str:
    """Tensors compared together: a role's weights, or its spectral-norm vectors (which move far more)."""
    return name.split("/")[0] + ("/sn" if name.endswith(("._u", "._v")) else "")


def assert_same(got: dict, want: dict, what: str, before: dict) -> None:
    """Equal up to float noise: within each group, every difference below 1 % of the largest change the
    step made to the group (a wrong gradient, random draw or buffer changes tensors by their update's size)."""
    assert got.keys() == want.keys(), what
    change: dict[str, float] = {}
    for k in want:
        change[group(k)] = max(change.get(group(k), 0.0), float((want[k] - before[k]).abs().max()))
    assert max(change.values()) > 0, f"{what}: nothing was trained, the comparison proves nothing"
    excess = {k: float((got[k] - want[k]).abs().max()) / (0.01 * change[group(k)] + 1e-7) for k in want}
    worst = max(excess, key=excess.get)
    assert excess[worst] < 1, (f"{what}: {worst} differs by {float((got[worst] - want[worst]).abs().max()):.3g} "
                               f"(largest change of {group(worst)} in the step: {change[group(worst)]:.3g})")


@pytest.fixture(scope="module")
def two_process_runs(tiny_sd15_path, tmp_path_factory):
    from distillkit.testing.shapes import write_shapes_dataset

    root = tmp_path_factory.mktemp("mp")
    images = write_shapes_dataset(root / "shapes", n=8, size=64)
    zero3 = regression_recipe(tiny_sd15_path, root / "zero3")
    zero3["train"]["sharding"] = "zero3"  # the full student sharded per UNet block (FSDP2 on gloo)
    zero3["student"]["optim"]["warmup_steps"] = 10  # a resumed LR schedule must continue, not restart
    recipes = {"regression": regression_recipe(tiny_sd15_path, root / "regression"),
               "add": add_recipe(tiny_sd15_path, images, root / "add"), "sid": sid_recipe(tiny_sd15_path, root / "sid"),
               "zero3": zero3}
    for r in recipes.values():
        os.makedirs(r["run"]["output_dir"])
    (root / "recipes.json").write_text(json.dumps(list(recipes.values())))
    (root / "mp.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(root / "mp.py"),
           str(root / "recipes.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return recipes


@pytest.mark.parametrize("case", ["regression", "add", "sid", "zero3"])
def test_two_processes_equal_one_process_with_the_same_global_batch(two_process_runs, case, tmp_path):
    recipe = two_process_runs[case]
    out = recipe["run"]["output_dir"]
    info = json.loads(open(f"{out}/mp.json").read())
    assert info["world"] == 2
    assert info["sharded"] == (["student"] if case == "zero3" else [])
    for k in (1, 2):
        a, b = load_file(f"{out}/weights-{k}-rank0.safetensors"), load_file(f"{out}/weights-{k}-rank1.safetensors")
        assert all(torch.equal(a[n], b[n]) for n in a), "the ranks diverged: gradients were not averaged"

    _, engine = one_process(recipe, tmp_path / "one", resume="never")
    engine.setup()
    before = weights(engine)
    prompts = [engine.data.batch(j)["prompts"][0] for j in range(2)]
    assert prompts[0] != prompts[1], "both micro-batches saw the same data; the test proves nothing"
    for k in (1, 2):
        metrics = engine.step()
        want = load_file(f"{out}/weights-{k}-rank0.safetensors")
        assert_same(weights(engine), want, f"{case} step {k}", before)
        before = want
        for name, norm in info["norms"][k - 1].items():
            assert metrics[name] == pytest.approx(norm, rel=1e-4), f"{case} step {k}: {name}"


def test_sharded_run_resumes_sharded(two_process_runs):
    out = two_process_runs["zero3"]["run"]["output_dir"]
    want = load_file(f"{out}/weights-2-rank0.safetensors")
    assert_same(load_file(f"{out}/weights-2-resumed-rank0.safetensors"), want, "zero3 resumed on 2 processes",
                load_file(f"{out}/weights-1-rank0.safetensors"))


@pytest.mark.parametrize("case", ["regression", "add", "sid", "zero3"])
def test_checkpoint_from_two_processes_resumes_on_one(two_process_runs, case, tmp_path):
    recipe = two_process_runs[case]
    out = recipe["run"]["output_dir"]
    ckpt = f"{out}/checkpoints/step-00000001"
    _, engine = one_process(recipe, tmp_path / "resumed", resume=ckpt)
    engine.setup()
    assert engine.global_step == 1
    step1 = load_file(f"{out}/weights-1-rank0.safetensors")
    assert all(torch.equal(v, step1[k]) for k, v in weights(engine).items()), f"{case}: not restored exactly"
    engine.step()
    assert_same(weights(engine), load_file(f"{out}/weights-2-rank0.safetensors"), f"{case} resumed step 2", step1)
