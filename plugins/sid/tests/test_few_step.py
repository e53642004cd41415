"""Few-step SiD's sampler as the SiD recipes configure it: t_i = ⌊625 (1 − i/K)⌋, the first input σ_625·z,
k ~ U{1..K} with steps 1..k−1 run without gradient, fresh or fixed re-noising, and one k for all processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from distillkit import Student
from distillkit_sid.functional import few_step_timesteps

TIMESTEPS = few_step_timesteps(625, 4)


def _student(backbone, renoise="fresh"):
    return Student.build(backbone, TIMESTEPS, first_input="sigma_noise", renoise=renoise, seed=0)


def _calls(student):
    """Record each student UNet call: (timestep, input, grad enabled)."""
    log = []
    module = student.unet.module

    def hook(_m, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        log.append((int(torch.as_tensor(t).flatten()[0]), sample.detach().clone(), torch.is_grad_enabled()))

    return log, module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("k_seed", range(6))
def test_training_sample_runs_k_steps_and_keeps_the_graph_of_the_last_only(tiny_sd15, k_seed):
    student = _student(tiny_sd15)
    cond = tiny_sd15.encode_prompts(["a red circle", "a blue square"], 32)
    log, handle = _calls(student)
    try:
        sample = student.training_sample("noise", cond, (2, 4, 4, 4), torch.Generator().manual_seed(0),
                                         shared_generator=torch.Generator().manual_seed(k_seed))
    finally:
        handle.remove()
    k = len(log)
    assert [t for t, _, _ in log] == TIMESTEPS[:k] and int(sample.t[0]) == TIMESTEPS[k - 1]
    assert [g for _, _, g in log] == [False] * (k - 1) + [True]  # steps 1..k−1 without gradient
    z = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    sigma = float(tiny_sd15.schedule.sigma(torch.tensor(625)))
    assert torch.allclose(log[0][1], sigma * z)  # the first input is σ_625·z
    # the gradient reaches the student through the last step alone: the same x0 from its detached input
    assert sample.x0.requires_grad and not sample.input.requires_grad
    again = student.predict(sample.input, sample.t, cond).x0
    params = student.trainable_parameters()
    g1 = torch.autograd.grad(sample.x0.sum(), params)
    g2 = torch.autograd.grad(again.sum(), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


@pytest.mark.parametrize("renoise", ["fresh", "fixed"])
def test_renoising_between_steps(tiny_sd15, renoise):
    student = _student(tiny_sd15, renoise)
    cond = tiny_sd15.encode_prompts(["a red circle"], 32)
    z = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(3))
    log, handle = _calls(student)
    try:
        with torch.no_grad():
            student.run_steps(z, cond, TIMESTEPS[:2], generator=torch.Generator().manual_seed(4))
    finally:
        handle.remove()
    with torch.no_grad():
        x0 = student.predict(log[0][1], TIMESTEPS[0], cond).x0
    fixed = tiny_sd15.schedule.add_noise(x0, z, torch.tensor([TIMESTEPS[1]]))  # x = α x̂0 + σ z, z reused
    assert torch.allclose(log[1][1], fixed, atol=1e-6) == (renoise == "fixed")


SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from distillkit import Engine
    model, out = sys.argv[1], sys.argv[2]
    engine = Engine.from_recipe({
        "run": {"output_dir": out, "max_steps": 3, "checkpoint_every": 100, "sample_every": 0, "progress": False},
        "model": {"family": "sd15", "pretrained": model},
        "student": {"timesteps": [625, 468, 312, 156], "input": "noise", "first_input": "sigma_noise",
                    "optim": {"lr": 1e-4, "betas": [0.0, 0.999]}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square", "a green triangle", "a yellow circle"],
                 "resolution": 32, "batch_size": 1},
        "train": {"device": "cpu", "generator_sample": "fresh"},
        "critics": [{"name": "core.fake_score", "params": {"lora": {"rank": 2}}}],
        "losses": [{"name": "sid.sid"}],
        "sample": {"prompts": ["a"], "steps": [1]},
    }).setup()
    seen = []
    make = engine.student.training_sample
    def recorded(*args, **kwargs):
        s = make(*args, **kwargs)
        seen.append(int(s.t[0]))
        return s
    engine.student.training_sample = recorded
    for _ in range(3):
        engine.step()
    acc = engine.accelerator
    everyone = acc.gather_for_metrics([seen])
    prompts = acc.gather_for_metrics([engine.data.batch(0)["prompts"][0]])
    if acc.is_main_process:
        with open(out + "/k.json", "w") as f:
            json.dump({"world": acc.num_processes, "seen": everyone, "prompts": prompts}, f)
    acc.end_training()
''')


def test_every_process_draws_the_same_k(tiny_sd15_path, tmp_path):
    script = tmp_path / "k.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           str(tiny_sd15_path), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "k.json").read_text())
    assert info["world"] == 2 and info["prompts"][0] != info["prompts"][1], "both ranks saw the same prompts"
    rank0, rank1 = info["seen"]
    assert len(rank0) == 6, rank0  # 3 steps × (the critic's sample + the generator's fresh one)
    assert rank0 == rank1, f"the ranks trained on different steps k: {rank0} vs {rank1}"
    assert len(set(rank0)) > 1, f"k never changed ({rank0}): the test would not see a disagreement"
