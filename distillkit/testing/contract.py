"""The contracts every plugin's losses and critics must meet, as reusable pytest classes.

Subclass :class:`LossContract` (or :class:`CriticContract`) in a plugin's tests, set ``loss`` (its
qualified name) plus whatever ``params`` / ``critic_params`` make it cheap, and pytest checks it on a tiny
SD1.5-shaped model (or ``family = "sdxl"``), driving the engine through its public methods only:

* its ``params`` round-trip through its pydantic ``Config``;
* generator phase: a finite scalar whose gradient reaches the student, and whose graph passes through
  exactly the frozen networks the loss declares (``Loss.differentiates_through``) — checked with the
  networks made trainable for the check (:class:`~distillkit.testing.probes.GradientProbe`), so a
  missing stop-gradient (a teacher on the graph) and a ``no_grad`` shortcut (SiD without its path
  through the networks) both fail;
* critic phase: a finite scalar that reaches only the bound critics' own weights — not the student (even
  made trainable), not the teacher, not any frozen network;
* one full engine step is finite, moves the student and the critics it should, and leaves the teacher
  and every frozen network bit-identical.

Needs the fixtures of :mod:`distillkit.testing.fixtures` (``pytest_plugins``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from distillkit.losses.base import Phase
from distillkit.testing.probes import GradientProbe


def _network(label: str) -> str:
    """A probe label as a network name a loss can declare (a critic's frozen parts count as the critic)."""
    return label.split(" (frozen parts)")[0]


class _EngineHarness:
    family: ClassVar[str] = "sd15"
    student_input: ClassVar[str] = "real"
    resolution: ClassVar[int] = 32
    student: ClassVar[dict[str, Any]] = {}  # extra [student] keys, e.g. {"lora": {"rank": 2}}
    teacher_scale: ClassVar[float] = 2.0
    #: extra plugins to register (name -> module/object) when the loss is not installed via entry points
    extra_plugins: ClassVar[dict[str, Any]] = {}

    def _registry(self):
        from distillkit.registry import Registry

        return Registry.discover(extra_plugins=dict(self.extra_plugins))

    def _base_recipe(self, model_path, images, out) -> dict:
        return {
            "run": {"output_dir": str(out), "max_steps": 1, "sample_every": 0, "checkpoint_every": 1000},
            "model": {"family": self.family, "pretrained": str(model_path)},
            "student": {"timesteps": [999, 499], "input": self.student_input, "optim": {"lr": 1e-3},
                        **self.student},
            "teacher": {"guidance_scale": self.teacher_scale},
            "data": {"images": str(images), "prompts": ["a red circle", "a blue square"],
                     "resolution": self.resolution, "batch_size": 2},
            "train": {"device": "cpu"},
            "sample": {"prompts": ["a"], "steps": [1]},
        }

    def _build(self, request, tmp_path, recipe_fn):
        from distillkit.engine import Engine
        from distillkit.testing.shapes import write_shapes_dataset

        registry = self._registry()
        model_path = request.getfixturevalue(f"tiny_{self.family}_path")
        images = write_shapes_dataset(tmp_path / "shapes", n=4, size=self.resolution)
        recipe = recipe_fn(registry, self._base_recipe(model_path, images, tmp_path / "run"))
        return Engine.from_recipe(recipe, registry=registry).setup()


def _snapshot(tensors) -> dict:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _frozen_state(engine) -> dict[str, torch.Tensor]:
    """Every weight no optimiser may touch: the backbone's frozen networks (the shared base's non-adapter
    weights included) and each critic's frozen parts."""
    state = {}
    for name, module in engine.backbone.frozen_modules().items():
        owned = {id(p) for t in engine.trained.values() for p in t.parameters}
        state.update({f"{name}.{n}": p for n, p in module.named_parameters() if id(p) not in owned})
    for cid, critic in engine.critics.items():
        own = {id(p) for p in critic.trainable_parameters()}
        state.update({f"critic {cid}.{n}": p for n, p in critic.named_parameters() if id(p) not in own})
    return _snapshot(state)


class LossContract(_EngineHarness):
    loss: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    #: params of the critic(s) the loss binds: one dict for every role, or {critic type: params}
    critic_params: ClassVar[dict[str, Any]] = {}
    critic_params_by_type: ClassVar[dict[str, dict[str, Any]]] = {}

    def _recipe(self, registry, recipe: dict) -> dict:
        cls = registry.loss(self.loss)
        roles = cls.critic_roles()
        recipe["losses"] = [{"name": self.loss, "params": dict(self.params)}]
        if roles:
            recipe["critics"] = [{"name": kind, "id": role,
                                  "params": dict(self.critic_params_by_type.get(kind, self.critic_params))}
                                 for role, kind in roles.items()]
            recipe["losses"][0]["critics"] = {role: role for role in roles}
        if cls.needs_real_data or self.student_input == "real":
            return recipe
        recipe["data"].pop("images")
        return recipe

    @pytest.fixture
    def contract_engine(self, request, tmp_path):
        assert self.loss, f"{type(self).__name__} must set `loss` to the qualified loss name it tests"
        return self._build(request, tmp_path, self._recipe)

    @staticmethod
    def _roles(engine) -> dict:
        bound = engine.losses[0]
        return {role: engine.critics[cid] for role, cid in bound.critic_ids.items()}

    # -- the contract ---------------------------------------------------------------------------
    def test_config_round_trips(self):
        cls = self._registry().loss(self.loss)
        cfg = cls.Config(**self.params)
        assert cls.Config(**cfg.model_dump()) == cfg

    def test_generator_phase_follows_its_declared_gradient_paths(self, contract_engine):
        engine = contract_engine
        bound = engine.losses[0]
        if not type(bound.loss).has_generator_term():
            pytest.skip(f"{self.loss} has no generator term")
        batch = engine.draw_batch(0)
        probe = GradientProbe(engine, self._roles(engine), critics_trainable=True)
        with engine.trainable("student"), probe:
            result = engine.phase_loss(Phase.GENERATOR, batch, engine.student_sample(batch, grad=True))
            assert result.bad is None, f"{self.loss}: non-finite generator loss ({result.metrics})"
            assert result.total is not None and result.total.dim() == 0
            reached = probe.reached(result.total)
        assert "student" in reached, f"{self.loss}: no gradient reaches the student"
        networks = {_network(x) for x in reached} - {"student"}
        here = {"teacher"} | {_network(x) for x in probe.params}  # a family without a VAE cannot reach one
        declared = set(bound.loss.gradient_paths()) & here
        extra, unused = networks - declared, declared - networks
        assert not extra, (f"{self.loss}: the generator loss back-propagates through {sorted(extra)}, which it does "
                           f"not declare in `differentiates_through` (a missing stop-gradient / detach?)")
        assert not unused, (f"{self.loss}: declares it differentiates through {sorted(unused)}, but its graph never "
                            f"passes through them (a no_grad shortcut computes a different loss)")

    def test_critic_phase_reaches_only_its_critics(self, contract_engine):
        engine = contract_engine
        bound = engine.losses[0]
        if not bound.has_critic_term:
            pytest.skip(f"{self.loss} has no critic term")
        roles = self._roles(engine)
        batch = engine.draw_batch(0)
        probe = GradientProbe(engine, roles, student_trainable=True)
        with engine.trainable(*bound.critic_ids.values()), probe:
            sample = engine.student_sample(batch, grad=True)  # a sample *with* its graph: the phase must cut it
            result = engine.phase_loss(Phase.CRITIC, batch, sample)
            assert result.bad is None, f"{self.loss}: non-finite critic loss ({result.metrics})"
            assert result.total is not None and result.total.dim() == 0
            reached = probe.reached(result.total)
        assert reached & set(roles), f"{self.loss}: the critic loss reaches none of its critics {sorted(roles)}"
        wrong = reached - set(roles)
        assert not wrong, (f"{self.loss}: the critic loss back-propagates into {sorted(wrong)}; in the critic phase "
                           f"only the critics' own weights may be on the graph (detach the student's sample, "
                           f"run frozen networks under no_grad)")

    def test_one_engine_step_moves_the_right_weights(self, contract_engine):
        engine = contract_engine
        bound = engine.losses[0]
        student0 = _snapshot(engine.student.state_dict())
        critics0 = {cid: _snapshot(engine.critics[cid].trainable_state_dict()) for cid in bound.critic_ids.values()}
        frozen0 = _frozen_state(engine)
        metrics = engine.step()
        assert "nonfinite" not in metrics, metrics
        values = [v for k, v in metrics.items() if k.startswith(("loss/", "generator/", "critic/"))]
        assert values and all(torch.isfinite(torch.tensor(float(v))) for v in values)
        moved = any(not torch.equal(v, engine.student.state_dict()[k]) for k, v in student0.items())
        assert moved == type(bound.loss).has_generator_term(), "the student moved iff the loss has a generator term"
        if bound.has_critic_term:
            for cid, before in critics0.items():
                now = engine.critics[cid].trainable_state_dict()
                assert any(not torch.equal(v, now[k]) for k, v in before.items()), f"critic {cid!r} did not move"
        frozen1 = _frozen_state(engine)
        changed = [k for k, v in frozen0.items() if not torch.equal(v, frozen1[k])]
        assert not changed, f"frozen weights changed in a step: {changed[:5]}"


class CriticContract(_EngineHarness):
    """What any critic must do: own exactly its trainable weights, round-trip them through a checkpoint,
    train in the critic phase without touching the teacher. ``loss`` names a loss that trains it."""

    critic: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    loss: ClassVar[str] = ""
    loss_params: ClassVar[dict[str, Any]] = {}
    #: the loss's other critic roles, if it has several: role -> {"name": type, "params": {...}}
    companions: ClassVar[dict[str, dict[str, Any]]] = {}

    def _recipe(self, registry, recipe: dict) -> dict:
        roles = registry.loss(self.loss).critic_roles()
        role = next(r for r, kind in roles.items() if kind == self.critic and r not in self.companions)
        recipe["critics"] = [{"name": self.critic, "id": "under_test", "params": dict(self.params)}]
        recipe["critics"] += [{"name": c["name"], "id": r, "params": dict(c.get("params", {}))}
                              for r, c in self.companions.items()]
        binding = {role: "under_test", **{r: r for r in self.companions}}
        recipe["losses"] = [{"name": self.loss, "params": dict(self.loss_params), "critics": binding}]
        return recipe

    @pytest.fixture
    def critic_engine(self, request, tmp_path):
        assert self.critic and self.loss, f"{type(self).__name__} must set `critic` and `loss`"
        return self._build(request, tmp_path, self._recipe)

    def test_owns_exactly_its_trainable_weights(self, critic_engine):
        critic = critic_engine.critics["under_test"]
        own = critic.trainable_parameters()
        assert own and all(p.requires_grad for p in own), "a critic must own trainable weights"
        assert {id(p) for p in own} == {id(p) for p in critic_engine.trained["under_test"].parameters}
        own_ids = {id(p) for p in own}
        assert all(not p.requires_grad for p in critic.parameters() if id(p) not in own_ids), \
            "every weight of the critic not in trainable_parameters() must be frozen"
        student = {id(p) for p in critic_engine.student.trainable_parameters()}
        assert not own_ids & student, "the critic owns weights of the student"

    def test_checkpoint_round_trip(self, critic_engine):
        critic = critic_engine.critics["under_test"]
        saved = _snapshot(critic.trainable_state_dict())
        with torch.no_grad():
            for p in critic.trainable_parameters():
                p.add_(1.0)
        critic.load_trainable_state_dict(saved)
        now = critic.trainable_state_dict()
        assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)

    def test_critic_phase_trains_it_and_leaves_the_teacher_alone(self, critic_engine):
        engine = critic_engine
        critic = engine.critics["under_test"]
        x = torch.randn(2, *engine.backbone.sample_shape(1, engine.recipe.data.resolution)[1:],
                        generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500, 500])
        batch = engine.draw_batch(0)
        with torch.no_grad():
            teacher0 = engine.teacher.predict(x, t, batch.cond, batch.uncond).output
        before = _snapshot(critic.trainable_state_dict())
        frozen0 = _frozen_state(engine)
        metrics = engine.step()
        assert metrics.get("grad_norm/under_test", 0) > 0, "no gradient reached the critic"
        now = critic.trainable_state_dict()
        assert any(not torch.equal(v, now[k]) for k, v in before.items()), "the critic's weights did not move"
        with torch.no_grad():
            teacher1 = engine.teacher.predict(x, t, batch.cond, batch.uncond).output
        assert torch.equal(teacher0, teacher1), "the teacher's output changed after a critic update"
        frozen1 = _frozen_state(engine)
        assert all(torch.equal(v, frozen1[k]) for k, v in frozen0.items()), "frozen weights changed"
