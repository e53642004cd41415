"""The engine's phase mechanics on tiny models, with fake critics and losses that make each rule visible:
several critics per loss, per-phase weights and ramps, the sample policy, update ratios, phase order,
warm-up, the optimiser switch, EMA start, resume modes, runtime hooks and budget counters."""

from __future__ import annotations

import pytest
import torch

import distillkit
from distillkit import Engine, LossOutput, Registry
from distillkit.errors import DistillkitError


class Linear(distillkit.Critic):
    name = "linear"

    def __init__(self, config, env):
        super().__init__(config, env)
        self.head = torch.nn.Conv2d(env.backbone.channels, 1, 1)

    def forward(self, x):
        return self.head(x).mean(dim=(1, 2, 3))


class TwoCritics(distillkit.Loss):
    """A loss bound to two critics: the generator fools both, the critic term trains both."""

    name = "two"
    critics = {"a": "fake.linear", "b": "fake.linear"}

    def generator_loss(self, ctx):
        x = ctx.student_x0
        val = -(ctx.critics["a"](x) + ctx.critics["b"](x)).mean()
        return LossOutput(val, {"g": val.detach()})

    def critic_loss(self, ctx):
        x = ctx.student_x0
        val = ctx.critics["a"](x).pow(2).mean() + 3 * ctx.critics["b"](x).pow(2).mean()
        return LossOutput(val)


class Record(distillkit.Loss):
    """Records what each phase saw; its values are small but nonzero so updates happen."""

    name = "record"
    critic = "fake.linear"
    seen: list = []

    def generator_loss(self, ctx):
        Record.seen.append(("generator", ctx.step, ctx.student_x0.detach().clone(), ctx.student_t.clone()))
        val = ctx.critic(ctx.student_x0).mean() + ctx.student_x0.pow(2).mean()
        return LossOutput(val)

    def critic_loss(self, ctx):
        Record.seen.append(("critic", ctx.step, ctx.student_x0.clone(), ctx.student_t.clone()))
        return LossOutput(ctx.critic(ctx.student_x0).pow(2).mean())


class Hooks:
    def __init__(self):
        self.calls = []

    @distillkit.hookimpl
    def on_setup(self, engine):
        self.calls.append(("setup", engine.global_step))

    @distillkit.hookimpl
    def on_samples(self, step, images, path):
        self.calls.append(("samples", step, tuple(images.shape), path.name))


class FakePlugin:
    @distillkit.hookimpl
    def register_losses(self, register):
        register(TwoCritics)
        register(Record)

    @distillkit.hookimpl
    def register_critics(self, register):
        register(Linear)


def make(model, out, losses, critics=(), **sections) -> Engine:
    r = {
        "run": {"output_dir": str(out), "max_steps": 4, "checkpoint_every": 100, "sample_every": 0, "seed": 5},
        "model": {"family": "sd15", "pretrained": str(model)},
        "student": {"timesteps": [999, 499], "input": "noise", "optim": {"lr": 1e-3, "grad_clip": 0.0}},
        "teacher": {"guidance_scale": 2.0},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu"},
        "critics": [{"name": "fake.linear", "id": cid, "optim": {"lr": 1e-2, "grad_clip": 0.0}} for cid in critics],
        "losses": losses,
        "sample": {"prompts": ["a"], "steps": [1]},
    }
    for key, value in sections.items():
        section, _, field = key.partition("__")
        r.setdefault(section, {})[field] = value
    return Engine.from_recipe(r, registry=Registry.discover(extra_plugins={"fake": FakePlugin()}))


def weights(engine, name="student") -> dict:
    t = engine.trained[name]
    return {k: v.detach().clone() for k, v in t.state_dict().items()}


def moved(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_a_loss_trains_two_critics_with_its_own_weight_in_each_phase(tiny_sd15_path, tmp_path):
    def one_step(out, weight, critic_weight):
        loss = {"name": "fake.two", "critics": {"a": "a", "b": "b"}, "weight": weight, "critic_weight": critic_weight}
        e = make(tiny_sd15_path, out, [loss], critics=("a", "b")).setup()
        a0, b0 = weights(e, "a"), weights(e, "b")
        m = e.step()
        assert moved(a0, weights(e, "a")) and moved(b0, weights(e, "b")), "both bound critics train"
        return m

    m1 = one_step(tmp_path / "1", 1.0, 1.0)
    m2 = one_step(tmp_path / "2", 2.0, 0.5)
    # Gradients are logged before the update, so they scale exactly with each phase's own weight.
    assert m2["grad_norm/a"] == pytest.approx(0.5 * m1["grad_norm/a"], rel=1e-5)
    assert m2["grad_norm/b"] == pytest.approx(0.5 * m1["grad_norm/b"], rel=1e-5)
    assert m2["grad_norm/student"] == pytest.approx(2.0 * m1["grad_norm/student"], rel=1e-3)
    assert m2["generator/total"] == pytest.approx(2.0 * m2["generator/fake.two"])


def test_weight_ramps_are_applied_per_step(tiny_sd15_path, tmp_path):
    ramp = {"start": 0.0, "end": 1.0, "from_step": 0, "to_step": 4}
    e = make(tiny_sd15_path, tmp_path / "r", [{"name": "fake.two", "weight": ramp, "critic_weight": ramp,
                                               "critics": {"a": "a", "b": "b"}}], critics=("a", "b"))
    first, second = e.step(), e.step()
    assert first["grad_norm/student"] == 0 and first["grad_norm/a"] == 0 and first["generator/total"] == 0
    assert second["grad_norm/student"] > 0 and second["grad_norm/a"] > 0
    assert second["generator/total"] == pytest.approx(0.25 * second["generator/fake.two"])


@pytest.mark.parametrize("policy", ["shared", "fresh"])
def test_sample_policy_shares_or_redraws_the_generator_sample(tiny_sd15_path, tmp_path, policy):
    Record.seen.clear()
    e = make(tiny_sd15_path, tmp_path / policy, [{"name": "fake.record"}], critics=("linear",),
             train__device="cpu", train__generator_sample=policy)
    for _ in range(6):
        e.step()
    for (p1, s1, x_critic, t_critic), (p2, s2, x_gen, t_gen) in zip(Record.seen[::2], Record.seen[1::2]):
        assert (p1, p2) == ("critic", "generator") and s1 == s2
        assert not x_critic.requires_grad
        assert torch.equal(x_critic, x_gen) == (policy == "shared")
        assert torch.equal(t_critic, t_gen), "one few-step index k per step, for both phases"
    assert len({int(t[0]) for _, _, _, t in Record.seen}) == 2, "k varies between steps"


def test_critic_first_false_runs_the_generator_phase_first(tiny_sd15_path, tmp_path):
    Record.seen.clear()
    e = make(tiny_sd15_path, tmp_path / "g", [{"name": "fake.record"}], critics=("linear",),
             train__device="cpu", train__critic_first=False)
    e.step()
    assert [r[0] for r in Record.seen] == ["generator", "critic"]
    # shared sample: the critic sees what the student produced *before* its update in this step
    assert torch.equal(Record.seen[0][2], Record.seen[1][2])


def test_generator_every_updates_the_student_one_step_in_n_and_counts_exactly(tiny_sd15_path, tmp_path):
    e = make(tiny_sd15_path, tmp_path / "n", [{"name": "fake.record"}], critics=("linear",),
             train__device="cpu", train__generator_every=5).setup()
    moves = []
    for _ in range(10):
        before = weights(e)
        e.step()
        moves.append(moved(before, weights(e)))
    assert moves == [True, False, False, False, False] * 2
    budget = e.budget()
    assert budget["student_updates"] == 2 and budget["critic_updates/linear"] == 10
    assert budget["images_seen"] == 10 * 2 and budget["backward_passes"] == 12


def test_warmup_and_the_adamw_switch(tiny_sd15_path, tmp_path):
    e = make(tiny_sd15_path, tmp_path / "w", [{"name": "core.regression"}],
             student__optim={"lr": 1e-3, "warmup_steps": 4, "weight_decay": 0.01})
    lrs = [e.step()["lr/student"] for _ in range(5)]
    assert lrs == pytest.approx([1e-3 * f for f in (0.5, 0.75, 1.0, 1.0, 1.0)])
    assert type(getattr(e.trained["student"].optimizer, "optimizer")).__name__ == "AdamW"
    plain = make(tiny_sd15_path, tmp_path / "p", [{"name": "core.regression"}]).setup()
    assert type(plain.trained["student"].optimizer.optimizer).__name__ == "Adam"


def test_ema_starts_at_start_step(tiny_sd15_path, tmp_path):
    e = make(tiny_sd15_path, tmp_path / "e", [{"name": "core.regression"}],
             student__ema={"decay": 0.5, "start_step": 2}).setup()
    for step in (1, 2, 3):
        e.step()
        live = e.student.state_dict()
        same = all(torch.equal(e.ema.shadow[k], live[k].float()) for k in live)
        assert same == (step <= 2), f"after step {step}"


def test_resume_never_refuses_and_an_explicit_path_is_taken(tiny_sd15_path, tmp_path):
    out = tmp_path / "run"
    make(tiny_sd15_path, out, [{"name": "core.regression"}], run__checkpoint_every=2).fit(max_steps=4, export=False)
    with pytest.raises(DistillkitError, match="run.resume = 'never'; nothing was overwritten"):
        make(tiny_sd15_path, out, [{"name": "core.regression"}], run__resume="never").setup()
    picked = make(tiny_sd15_path, out, [{"name": "core.regression"}],
                  run__resume=str(out / "checkpoints" / "step-00000002")).setup()
    assert picked.global_step == 2


def test_on_setup_and_on_samples_fire(tiny_sd15_path, tmp_path):
    hooks = Hooks()
    e = make(tiny_sd15_path, tmp_path / "h", [{"name": "core.regression"}], run__sample_every=2)
    e.add_callback(hooks)
    e.fit(max_steps=2, export=False)
    assert hooks.calls[0] == ("setup", 0)
    assert ("samples", 2, (1, 3, 32, 32), "step-00000002.png") in hooks.calls
