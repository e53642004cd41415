"""Each memory saver's plumbing on the tiny models: it is applied, and it changes nothing it must not.

* gradient checkpointing on/off gives the same gradients, also for LoRA adapters on a shared base
  (the student's and a fake score's), whose adapter must be active again when a block is recomputed;
* half-precision frozen networks are in half precision, trainable weights stay fp32, and no frozen network
  holds optimiser state;
* 8-bit Adam without bitsandbytes is a recipe error naming the field and the install command;
* the text-embedding cache gives the same loss as live encoding, without calling the text encoder;
* EMA offload, teacher block offload, attention processors and compile keep the results.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from distillkit import Engine
from distillkit.engine import memory
from distillkit.errors import RecipeError
from distillkit.losses.base import Phase

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def recipe(model_path, out, family="sd15", **sections):
    r = {"run": {"output_dir": str(out), "sample_every": 0, "progress": False, "resume": "never"},
         "model": {"family": family, "pretrained": str(model_path)},
         "student": {"timesteps": [999, 499], "input": "noise"},
         "teacher": {"guidance_scale": 2.0},
         "data": {"prompts": PROMPTS, "resolution": 32, "batch_size": 2},
         "train": {"device": "cpu"},
         "losses": [{"name": "core.regression"}]}
    for key, value in sections.items():
        r[key] = {**r.get(key, {}), **value} if isinstance(value, dict) else value
    return r


# -- gradient checkpointing ---------------------------------------------------------------------------
def _roles_and_grads(backbone_path, lora: bool, checkpointing: bool, broken: bool = False) -> dict:
    from distillkit.models.sd15 import SD15Backbone
    from distillkit.roles.critic import BuildEnv
    from distillkit.roles.fake_score import FakeScore, FakeScoreConfig
    from distillkit.roles.student import Student
    from distillkit.roles.teacher import Teacher

    backbone = SD15Backbone.from_pretrained(backbone_path)
    teacher = Teacher(backbone, backbone.teacher_unet, 2.0)
    student = Student.build(backbone, [999, 499], lora={"rank": 4} if lora else None, seed=1)
    env = BuildEnv(backbone, teacher, student, 32, torch.device("cpu"), role="fake", seed=2)
    fake = FakeScore(FakeScoreConfig(lora={"rank": 4} if lora else None), env)
    roles = SimpleNamespace(student=student, critics={"fake": fake}, backbone=backbone)
    if checkpointing:
        nets = memory.trained_networks(roles)
        if broken:  # diffusers' own checkpoint function: recomputes with no adapter active
            for n in nets:
                n.enable_gradient_checkpointing()
        else:
            assert memory.enable_gradient_checkpointing(roles) == nets
        assert all(any(getattr(m, "gradient_checkpointing", False) for m in n.modules()) for n in nets)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g)
    noise = torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([999, 499])
    cond = backbone.encode_prompts(PROMPTS[:2], 32)
    loss = student.predict(x, t, cond).x0.pow(2).mean() + fake.denoising_loss(x, t, noise, cond)
    loss.backward()
    params = {**{f"student.{n}": p for n, p in student.named_parameters().items()},
              **{f"fake.{n}": p for n, p in fake.named_trainable().items()}}
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}


@pytest.mark.parametrize("lora", [True, False], ids=["lora-shared-base", "full-copies"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_sd15_path, lora):
    plain = _roles_and_grads(tiny_sd15_path, lora, checkpointing=False)
    ckpt = _roles_and_grads(tiny_sd15_path, lora, checkpointing=True)
    assert plain.keys() == ckpt.keys()
    assert sum(float(g.abs().sum()) for g in plain.values()) > 0
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-7, msg=n)


def test_checkpointing_without_the_adapter_switch_loses_adapter_gradients(tiny_sd15_path):
    """What the adapter-aware checkpoint function prevents: the same comparison fails without it."""
    from torch.utils.checkpoint import CheckpointError

    plain = _roles_and_grads(tiny_sd15_path, True, checkpointing=False)
    try:
        broken = _roles_and_grads(tiny_sd15_path, True, checkpointing=True, broken=True)
    except CheckpointError:  # torch noticed the recomputation differs (here: fewer saved tensors)
        return
    assert any(not torch.allclose(broken[n], plain[n], rtol=1e-4, atol=1e-7) for n in plain)


# -- half-precision frozen networks, no optimiser state for frozen networks ---------------------------
@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change: reset it around a test
    that uses another one, so the tests after it can still build their fp32 engines."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_frozen_networks_in_half_precision_and_without_optimiser_state(tiny_sd15_path, tmp_path,
                                                                       fresh_accelerate_state):
    from distillkit.testing.shapes import write_shapes_dataset

    images = write_shapes_dataset(tmp_path / "shapes", n=4, size=64)
    engine = Engine.from_recipe(recipe(
        tiny_sd15_path, tmp_path / "run", model={"dtype": "bfloat16"}, train={"mixed_precision": "bf16"},
        student={"input": "real"}, data={"images": str(images), "prompts": None, "resolution": 64},
        critics=[{"name": "add.discriminator", "params": {"feature_network": "tiny", "text_encoder": "backbone",
                                                          "image_encoder": "same", "crop_prob": 0.0}}],
        losses=[{"name": "add.adversarial"}, {"name": "add.distill", "weight": 2.5}]))
    engine.setup()
    b = engine.backbone
    frozen = {"teacher unet": b.teacher_unet, "vae": b.vae, "text encoder": b.text_encoder,
              **{f"critic part {n}": dict(engine.critics["discriminator"].named_children())[n.split(".", 1)[1]]
                 for n in engine.savers["frozen_critic_parts"]}}
    assert any(n.startswith("critic part") for n in frozen), "the feature network was not cast"
    for name, module in frozen.items():
        dtypes = {p.dtype for p in module.parameters() if not p.requires_grad}
        assert dtypes == {torch.bfloat16}, f"{name}: {dtypes}"
    optimised = {id(p) for t in engine.trained.values() for g in t.optimizer.param_groups for p in g["params"]}
    for name, module in frozen.items():
        assert not any(id(p) in optimised for p in module.parameters() if not p.requires_grad), name
    assert all(p.dtype == torch.float32 for t in engine.trained.values() for p in t.parameters)
    metrics = engine.step()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("grad_norm/"))


# -- 8-bit Adam ---------------------------------------------------------------------------------------------
def test_eight_bit_adam_without_bitsandbytes_is_a_clear_recipe_error(tiny_sd15_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if it were not installed
    engine = Engine.from_recipe(recipe(tiny_sd15_path, tmp_path / "run", student={"optim": {"eight_bit": True}}))
    with pytest.raises(RecipeError) as err:
        engine.setup()
    message = str(err.value)
    assert "student.optim.eight_bit" in message and "pip install" in message and "bitsandbytes" in message


# -- text-embedding cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_text_embedding_cache_gives_the_same_loss_as_live_encoding(family, tiny_sd15_path, tiny_sdxl_path, tmp_path):
    path = tiny_sd15_path if family == "sd15" else tiny_sdxl_path
    losses = {}
    for cached in (False, True):
        engine = Engine.from_recipe(recipe(path, tmp_path / f"run{cached}", family,
                                           data={"cache_text_embeddings": cached}))
        engine.setup()
        calls = []
        for name, m in engine.backbone.frozen_modules().items():
            if name.startswith("text_encoder"):
                m.register_forward_pre_hook(lambda *_: calls.append(1))
        batch = engine.draw_batch(0)
        with engine.trainable("student"):
            losses[cached] = engine.phase_loss(Phase.GENERATOR, batch).total.detach()
        if cached:
            assert not calls, "the text encoder ran although every prompt was cached"
            assert engine.savers["text_cache"].hits > 0
    assert losses[False] != 0
    # equal up to float noise: the text encoder's batched matmuls round differently for another batch size
    torch.testing.assert_close(losses[True], losses[False], rtol=2e-4, atol=0)


# -- EMA offload, teacher offload, attention, compile ----------------------------------------------------
def test_offloaded_ema_matches_the_ema_on_the_device():
    from distillkit.engine.ema import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    plain, off = EMA({"w": p}, 0.5), memory.OffloadedEMA({"w": p}, 0.5)
    for v in (1.0, 3.0):
        p.data.fill_(v)
        plain.update()
        off.update()
    assert off.shadow["w"].device.type == "cpu"
    torch.testing.assert_close(off.shadow["w"], torch.full((3,), 1.75))  # 0.5·(0.5·0 + 0.5·1) + 0.5·3
    torch.testing.assert_close(off.shadow["w"], plain.shadow["w"])


def test_ema_rampup_caps_the_half_life_at_a_share_of_the_updates():
    from distillkit.engine.ema import EMA, ramped_decay

    assert ramped_decay(0.999, 0.0, 1) == 0.999  # no ramp-up: the fixed decay from the first update
    # rampup 0.05 at update 101 (100 before it, as EDM counts): half-life 5 updates, so decay 0.5^(1/5)
    assert abs(ramped_decay(0.999, 0.05, 101) - 0.5**0.2) < 1e-12
    # later the decay's own half-life (log 0.5 / log 0.999 = 692.8 updates) is the shorter: back to 0.999
    assert abs(ramped_decay(0.999, 0.05, 20_000) - 0.999) < 1e-12
    p = torch.nn.Parameter(torch.zeros(1))
    ema = EMA({"w": p}, 0.9, rampup=1.0)  # half-lives 0, 1, 2 updates: decays 0, 0.5, 0.5^(1/2)
    for v in (2.0, 4.0, 8.0):
        p.data.fill_(v)
        ema.update()
    # 2 (a copy), then 0.5·2 + 0.5·4 = 3, then 0.5^(1/2)·3 + (1 − 0.5^(1/2))·8
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([0.5**0.5 * 3.0 + (1 - 0.5**0.5) * 8.0]))
    ema.reset()
    assert ema.updates == 0  # the ramp restarts with the average


def test_teacher_block_offload_moves_each_block_and_keeps_gradients(tiny_sd15):
    from distillkit.roles.teacher import Teacher

    teacher = Teacher(tiny_sd15, tiny_sd15.teacher_unet, 2.0)
    cond = tiny_sd15.encode_prompts(PROMPTS[:2], 32)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def run():
        xi = x.clone().requires_grad_(True)
        out = teacher.predict(xi, torch.tensor([500, 300]), cond, tiny_sd15.empty_conditioning(2, 32)).x0
        out.pow(2).sum().backward()  # SiD-style: gradients through the teacher's input
        return out.detach(), xi.grad

    want = run()
    offload = memory.BlockOffload(tiny_sd15.teacher_unet, torch.device("cpu"))
    units = len(offload.handles) // 2
    calls = []
    tiny_sd15.teacher_unet.register_forward_pre_hook(lambda *_: calls.append(1))
    placed = offload.moves
    got = run()
    assert calls and offload.moves - placed == 2 * units * len(calls)  # each block moved in and out per call
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_attention_processors_and_compile_keep_the_output(tiny_sd15):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = tiny_sd15.teacher_unet
    cond = tiny_sd15.encode_prompts(PROMPTS[:1], 32)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = {}
    for kind, cls in (("eager", AttnProcessor), ("sdpa", AttnProcessor2_0)):
        assert memory.set_attention([unet], kind) == 1
        assert {type(p) for p in unet.attn_processors.values()} == {cls}
        out[kind] = tiny_sd15.denoise(unet, x, torch.tensor([500]), cond).output
    torch.testing.assert_close(out["sdpa"], out["eager"], rtol=1e-4, atol=1e-5)
    assert memory.compile_networks([unet], backend="eager") == 1
    assert unet._compiled_call_impl is not None
    torch.testing.assert_close(tiny_sd15.denoise(unet, x, torch.tensor([500]), cond).output, out["sdpa"])
