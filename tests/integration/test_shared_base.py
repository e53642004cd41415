"""Roles as LoRA adapters on the teacher's one frozen UNet: they train, never touch the teacher, resume
exactly, and hold no second copy of the UNet."""

from __future__ import annotations

import torch

from distillkit import Engine, Registry
from distillkit.models.adapters import active_adapter, add_lora, current_adapter

from tests.contract.dsm_probe import PLUGINS as DSM


def make(model, out, max_steps=2, **student):
    r = {
        "run": {"output_dir": str(out), "max_steps": max_steps, "checkpoint_every": 2, "sample_every": 0, "seed": 3},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999], "input": "noise", "lora": {"rank": 2}, "optim": {"lr": 1e-2},
                    "ema": {"decay": 0.5}, **student},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu"},
        "critics": [{"name": "core.fake_score", "optim": {"lr": 1e-2}, "params": {"lora": {"rank": 2}}}],
        "losses": [{"name": "core.regression"}, {"name": "probe.fake_score_dsm"}],
        "sample": {"prompts": ["a"], "steps": [1]},
    }
    return Engine.from_recipe(r, registry=Registry.discover(extra_plugins=DSM))


def test_lora_student_and_lora_fake_score_share_one_unet_and_never_touch_the_teacher(tiny_sd15_path, tmp_path):
    e = make(tiny_sd15_path, tmp_path / "r").setup()
    base = e.teacher.unet.module
    fake = e.critics["fake_score"]
    assert e.student.unet.module is base and fake.unet.module is base, "one UNet in memory for all three roles"
    n_unets = {id(m) for m in [e.backbone.teacher_unet, e.student.unet.module, fake.unet.module]}
    assert len(n_unets) == 1
    own_s, own_f = set(e.student.named_parameters()), set(fake.named_trainable())
    assert all(".student." in n for n in own_s) and all(".fake_score." in n for n in own_f)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([600, 300])
    b = e.draw_batch(0)
    with torch.no_grad():
        teacher0 = e.teacher.predict(x, t, b.cond, b.uncond).output
    frozen0 = {n: p.clone() for n, p in base.named_parameters() if "lora" not in n}
    fake0 = {k: v.clone() for k, v in fake.trainable_state_dict().items()}
    metrics = e.step()
    assert metrics["grad_norm/fake_score"] > 0 and metrics["grad_norm/student"] > 0
    assert any(not torch.equal(v, fake.trainable_state_dict()[k]) for k, v in fake0.items()), "fake score moved"
    with torch.no_grad():
        teacher1 = e.teacher.predict(x, t, b.cond, b.uncond).output
    assert torch.equal(teacher0, teacher1), "the teacher's output must not change, bit for bit"
    assert all(torch.equal(p, frozen0[n]) for n, p in base.named_parameters() if "lora" not in n)
    assert current_adapter(base) is None, "outside a role's call no adapter is active (the bare module = teacher)"
    # each role's call really uses its own adapter
    with torch.no_grad():
        s = e.backbone.denoise(e.student.unet, x, t, b.cond).output
        f = fake.predict(x, t, b.cond).output
        plain = e.backbone.denoise(e.teacher.unet, x, t, b.cond).output
    assert not torch.equal(s, plain) and not torch.equal(f, plain) and not torch.equal(s, f)


def test_shared_base_run_resumes_bit_identically(tiny_sd15_path, tmp_path):
    full = make(tiny_sd15_path, tmp_path / "full", max_steps=4)
    full.fit(export=False)
    make(tiny_sd15_path, tmp_path / "half", max_steps=2).fit(export=False)
    resumed = make(tiny_sd15_path, tmp_path / "half", max_steps=4)
    resumed.fit(export=False)
    for name in ("student", "fake_score"):
        a = full.trained[name].state_dict()
        b = resumed.trained[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.shadow)


def test_switching_adapters_never_touches_requires_grad(tiny_sd15):
    unet = tiny_sd15.teacher_unet
    a = add_lora(unet, "a", rank=2, seed=0)
    b = add_lora(unet, "b", rank=2, seed=1)
    assert all(p.requires_grad for p in [*a.values(), *b.values()]), "adding b must not freeze a (peft would)"
    for p in a.values():
        p.requires_grad_(False)  # as the engine's generator phase does to a critic's adapter
    with active_adapter(unet, "a"):
        assert current_adapter(unet) == "a"
        with active_adapter(unet, "b"):
            assert current_adapter(unet) == "b"
        assert current_adapter(unet) == "a"
    assert current_adapter(unet) is None
    assert not any(p.requires_grad for p in a.values()) and all(p.requires_grad for p in b.values())
