"""``distillkit plugins`` and ``distillkit plugins show`` on fake installed plugins (entry points monkeypatched).

In-process through ``distillkit.cli.main``: what a user reads on stdout/stderr, and the exit code.
"""

from __future__ import annotations

import importlib.metadata
import types
from typing import Literal, Optional

import pydantic
import pytest

import distillkit
from distillkit.cli import main
from distillkit.models.backbone import Backbone


class CoreFamily(Backbone):
    family = "sd15"


class ThirdPartyFamily(Backbone):
    family = "sd15"


class Critic(distillkit.Critic):
    name = "judge"


class ParamLoss(distillkit.Loss):
    """A loss with a typed config: what `plugins show` must print."""

    name = "param"
    critic = "demo.judge"

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        scale: float = pydantic.Field(2.5, ge=0, description="multiplies the [main] term")
        mode: Literal["fast", "exact"] = pydantic.Field("exact", description="how to compute it")
        layers: Optional[list[int]] = None
        label: str = pydantic.Field(..., description="required, no default")

    def generator_loss(self, ctx):
        raise AssertionError("not run")

    def critic_loss(self, ctx):
        raise AssertionError("not run")


class GeneratorOnlyLoss(distillkit.Loss):
    name = "plain"

    def generator_loss(self, ctx):
        raise AssertionError("not run")


def plugin(**hooks):
    ns = types.SimpleNamespace()
    for name, fn in hooks.items():
        setattr(ns, name, distillkit.hookimpl(fn))
    return ns


def registering(*classes, replace=False):
    def hook(register):
        for cls in classes:
            register(cls, replace=replace)
    return hook


class FakeEntryPoint:
    def __init__(self, name, dist, obj=None, error=None, version="1.0"):
        self.name, self.value, self.group = name, f"{dist.replace('-', '_')}_module", "distillkit"
        self.dist = types.SimpleNamespace(metadata={"Name": dist}, version=version)
        self._obj, self._error = obj, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._obj


def _failing_import():
    try:
        raise ModuleNotFoundError("No module named 'libfoo' [needs extra]")
    except ModuleNotFoundError as exc:
        return exc


@pytest.fixture
def installed(monkeypatch):
    eps = [
        FakeEntryPoint("core", "distillkit", plugin(register_backbones=registering(CoreFamily)), version="0.1.0"),
        FakeEntryPoint("demo", "demo-dist", plugin(register_losses=registering(ParamLoss, GeneratorOnlyLoss),
                                                   register_critics=registering(Critic))),
        FakeEntryPoint("rogue", "rogue-dist", plugin(register_backbones=registering(ThirdPartyFamily))),
        FakeEntryPoint("typo", "typo-dist", plugin(register_loss=registering(GeneratorOnlyLoss))),
        FakeEntryPoint("broken", "broken-dist", error=_failing_import()),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: list(eps))
    monkeypatch.delenv("DISTILLKIT_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps table cells at the terminal width
    return eps


def test_plugins_lists_every_plugin_and_reports_each_problem_by_name(installed, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "demo-dist" in out and "demo.param" in out and "demo.judge" in out  # working plugins still listed
    assert "families: sd15" in out  # the core's row, not the rogue's
    [collision] = [line for line in out.splitlines() if line.startswith("name collision:")]
    assert "'rogue' (rogue-dist 1.0)" in collision and "'core' (distillkit 0.1.0)" in collision
    assert "unknown hook 'register_loss' (did you mean 'register_losses'?)" in out
    # The exception text keeps its brackets, and its traceback is only offered, not printed.
    assert "failed to import: ModuleNotFoundError: No module named 'libfoo' [needs extra]" in out
    assert "Traceback" not in out and "--verbose" in out


def test_plugins_verbose_shows_the_import_traceback(installed, capsys):
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "traceback of plugin 'broken' (broken-dist 1.0)" in out
    assert "Traceback (most recent call last)" in out and "in _failing_import" in out
    assert "module: demo-dist_module".replace("-", "_") in out


def test_replace_true_is_shown_on_both_plugins(monkeypatch, capsys):
    eps = [FakeEntryPoint("core", "distillkit", plugin(register_backbones=registering(CoreFamily)), version="0.1.0"),
           FakeEntryPoint("mine", "mine-dist", plugin(register_backbones=registering(ThirdPartyFamily, replace=True)))]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: list(eps))
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "families: sd15 (replaces 'core''s)" in out and "families: sd15 (replaced by 'mine')" in out
    assert "name collision" not in out


def test_plugins_show_prints_the_params_schema_roles_and_terms(installed, capsys):
    assert main(["plugins", "show", "demo.param"]) == 0
    out = capsys.readouterr().out
    assert "loss demo.param" in out and "from plugin 'demo' (demo-dist 1.0)" in out
    assert "critic roles: critic = demo.judge" in out
    assert "terms: generator yes, critic yes" in out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.count("│") == 5}
    assert rows["scale"] == ["float (>= 0)", "2.5", "multiplies the [main] term"]
    assert rows["mode"] == ["'fast' | 'exact'", "'exact'", "how to compute it"]
    assert rows["layers"] == ["list[int] | None", "None", ""]
    assert rows["label"] == ["str", "(required)", "required, no default"]


def test_plugins_show_a_generator_only_loss_and_a_critic(installed, capsys):
    assert main(["plugins", "show", "demo.plain"]) == 0
    out = capsys.readouterr().out
    assert "critic roles: none" in out and "terms: generator yes, critic no" in out
    assert "params: none" in out
    assert main(["plugins", "show", "demo.judge"]) == 0
    assert "critic demo.judge" in capsys.readouterr().out


def test_plugins_show_an_unknown_name_suggests_and_exits_2(installed, capsys):
    assert main(["plugins", "show", "demo.parma"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'demo.param'?" in err and "Traceback" not in err


def test_plugins_show_of_a_failed_plugin_says_why(installed, capsys):
    assert main(["plugins", "show", "typo.plain"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'typo' (typo-dist 1.0) was not loaded: it implements unknown hook 'register_loss'" in err
