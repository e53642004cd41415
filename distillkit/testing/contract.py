"""The loss contract every plugin's losses must meet, as a reusable pytest class.

Subclass :class:`LossContract` in a plugin's tests and set ``loss`` (its qualified name) plus whatever
``params`` / ``critic_params`` make it cheap; pytest then checks, on a tiny SD1.5-shaped model (or
``family = "sdxl"``), that

* its ``params`` round-trip through its pydantic ``Config``;
* the generator-phase loss is a finite scalar whose gradient reaches the student and nothing else
  (not the teacher, not the VAE or text encoders, not the critic's parameters);
* the critic-phase loss (if any) is a finite scalar whose gradient reaches only the bound critic's
  trainable parameters;
* one full engine step with it is finite.

Needs the fixtures of :mod:`distillkit.testing.fixtures` (``pytest_plugins``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from distillkit.losses.base import Phase


def _grads(params) -> list:
    return [p.grad for p in params]


class LossContract:
    loss: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    critic_params: ClassVar[dict[str, Any]] = {}
    family: ClassVar[str] = "sd15"
    student_input: ClassVar[str] = "real"
    resolution: ClassVar[int] = 32
    #: extra plugins to register (name -> module/object) when the loss is not installed via entry points
    extra_plugins: ClassVar[dict[str, Any]] = {}

    # -- harness --------------------------------------------------------------------------------
    def _recipe(self, registry, model_path, images, out) -> dict:
        cls = registry.loss(self.loss)
        recipe = {
            "run": {"output_dir": str(out), "max_steps": 1, "sample_every": 0, "progress": False,
                    "checkpoint_every": 1000},
            "model": {"family": self.family, "pretrained": str(model_path)},
            "student": {"timesteps": [999, 499], "input": self.student_input, "optim": {"lr": 1e-4}},
            "teacher": {"guidance_scale": 2.0},
            "data": {"images": str(images), "prompts": ["a red circle", "a blue square"],
                     "resolution": self.resolution, "batch_size": 2},
            "train": {"device": "cpu"},
            "losses": [{"name": self.loss, "params": dict(self.params)}],
            "sample": {"prompts": ["a"], "steps": [1]},
        }
        if cls.critic:
            recipe["critics"] = [{"name": cls.critic, "params": dict(self.critic_params)}]
        return recipe

    @pytest.fixture
    def contract_engine(self, request, tmp_path):
        from distillkit.engine import Engine
        from distillkit.registry import Registry
        from distillkit.testing.shapes import write_shapes_dataset

        assert self.loss, f"{type(self).__name__} must set `loss` to the qualified loss name it tests"
        registry = Registry.discover(extra_plugins=dict(self.extra_plugins))
        model_path = request.getfixturevalue(f"tiny_{self.family}_path")
        images = write_shapes_dataset(tmp_path / "shapes", n=4, size=self.resolution)
        engine = Engine.from_recipe(self._recipe(registry, model_path, images, tmp_path / "run"), registry=registry)
        return engine.setup()

    @staticmethod
    def _context(engine, phase: Phase):
        rl, loss = engine.losses[0]
        batch = engine._prepare_batch(engine.data.batch(0))
        shape = engine.backbone.sample_shape(len(batch["prompts"]), engine.recipe.data.resolution)
        critic = engine.critics[rl.critic_id].critic if rl.critic_id else None
        if phase is Phase.CRITIC and not rl.cls.has_critic_term():
            return rl, loss, critic, None
        params = engine.student_params if phase is Phase.GENERATOR else engine.critics[rl.critic_id].params
        with engine._trainable(params):
            with engine._trainable(engine.student_params):
                sample = engine.student.training_sample(
                    engine.recipe.student.input, batch["cond"], shape, engine._generator("student"),
                    real_x0=batch.get("real_x0"), device=engine.device)
            ctx = engine._context(phase, batch, sample, critic, "contract")
            out = loss.generator_loss(ctx) if phase is Phase.GENERATOR else loss.critic_loss(ctx)
            if out is not None:
                assert out.total.dim() == 0, f"{rl.entry.name}: total must be a scalar, got {tuple(out.total.shape)}"
                assert torch.isfinite(out.total), f"{rl.entry.name}: non-finite {phase.value} loss"
                out.total.backward()
        return rl, loss, critic, out

    @staticmethod
    def _frozen_params(engine, critic) -> dict[str, list]:
        frozen = {"teacher": list(engine.teacher.unet.parameters())}
        for name, module in engine.backbone.frozen_modules().items():
            frozen[f"backbone.{name}"] = list(module.parameters())
        if critic is not None:
            trainable = {id(p) for p in critic.trainable_parameters()}
            frozen["critic (frozen parts)"] = [p for p in critic.parameters() if id(p) not in trainable]
        return frozen

    # -- the contract ---------------------------------------------------------------------------
    def test_config_round_trips(self):
        from distillkit.registry import Registry

        cls = Registry.discover(extra_plugins=dict(self.extra_plugins)).loss(self.loss)
        cfg = cls.Config(**self.params)
        assert cls.Config(**cfg.model_dump()) == cfg

    def test_generator_phase_reaches_only_the_student(self, contract_engine):
        rl, loss, critic, out = self._context(contract_engine, Phase.GENERATOR)
        if out is None:
            pytest.skip(f"{self.loss} has no generator term")
        grads = [p.grad for p in contract_engine.student_params]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the student"
        for what, params in self._frozen_params(contract_engine, critic).items():
            assert all(p.grad is None for p in params), f"{what} received a gradient in the generator phase"
        if critic is not None:
            assert all(p.grad is None for p in critic.trainable_parameters()), \
                "the critic's trainable parameters received a gradient in the generator phase"

    def test_critic_phase_reaches_only_the_critic(self, contract_engine):
        rl, loss, critic, out = self._context(contract_engine, Phase.CRITIC)
        if out is None:
            pytest.skip(f"{self.loss} has no critic term")
        assert critic is not None, "a loss with a critic term must declare `critic = '<plugin>.<name>'`"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.trainable_parameters()), \
            "no gradient reached the critic"
        assert all(p.grad is None for p in contract_engine.student_params), "the student got a critic-phase gradient"
        for what, params in self._frozen_params(contract_engine, critic).items():
            assert all(p.grad is None for p in params), f"{what} received a gradient in the critic phase"

    def test_one_engine_step_is_finite(self, contract_engine):
        metrics = contract_engine.step()
        assert "nonfinite" not in metrics, metrics
        values = [v for k, v in metrics.items() if k.startswith(("loss/", "generator/", "critic/"))]
        assert values and all(torch.isfinite(torch.tensor(float(v))) for v in values)
