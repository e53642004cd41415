"""Plugin discovery that reports instead of breaking: collisions and broken plugins, each named, others unharmed.

The installed entry points are replaced by fakes (``importlib.metadata.entry_points`` monkeypatched), so
each case sees exactly the distributions it describes; the plugins are small in-process objects whose
classes import no model library.
"""

from __future__ import annotations

import importlib.metadata
import types

import pytest

import distillkit
from distillkit.errors import PluginError
from distillkit.models.backbone import Backbone
from distillkit.plugins import make_plugin_manager
from distillkit.registry import Registry

# -- fake plugins ---------------------------------------------------------------------------------


class CoreFamily(Backbone):
    family = "sd15"


class ThirdPartyFamily(Backbone):
    family = "sd15"


class OtherThirdPartyFamily(Backbone):
    family = "sd15"


class GoodLoss(distillkit.Loss):
    name = "good"


class OneLoss(distillkit.Loss):
    name = "twin"


class OtherLoss(distillkit.Loss):
    name = "twin"


def plugin(**hooks):
    """An object whose methods implement the given hooks (name -> function of ``register``)."""
    ns = types.SimpleNamespace()
    for name, fn in hooks.items():
        setattr(ns, name, distillkit.hookimpl(fn))
    return ns


def registers(kind: str, *classes, replace: bool = False):
    def hook(register):
        for cls in classes:
            if replace:
                register(cls, replace=True)
            else:
                register(cls)
    return hook


def core_plugin():
    return plugin(register_backbones=registers("backbones", CoreFamily))


def good_plugin():
    return plugin(register_losses=registers("losses", GoodLoss))


class FakeDist:
    def __init__(self, name: str, version: str = "1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name: str, dist: str, obj=None, error: Exception | None = None, version: str = "1.0"):
        self.name, self.value, self.group = name, f"{dist.replace('-', '_')}_module", "distillkit"
        self.dist = FakeDist(dist, version)
        self._obj, self._error = obj, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._obj


@pytest.fixture
def installed(monkeypatch):
    """Call with FakeEntryPoints: they become the whole ``distillkit`` entry-point group."""
    def install(*eps):
        def entry_points(**kwargs):
            assert kwargs == {"group": "distillkit"}
            return list(eps)
        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv("DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("DISTILLKIT_BLOCK_PLUGINS", raising=False)
    return install


def problems_text(reg: Registry) -> str:
    return "\n".join(reg.collisions + reg.problems)


# -- entry-point names ----------------------------------------------------------------------------


def test_two_distributions_with_one_entry_point_name_load_neither_and_name_both(installed):
    # Before: the second distribution was skipped without a word, so which one ran depended on sort order.
    installed(FakeEntryPoint("dup", "dist-alpha", good_plugin()),
              FakeEntryPoint("dup", "dist-beta", good_plugin(), version="2.0"),
              FakeEntryPoint("fine", "dist-fine", good_plugin()))
    reg = Registry.discover()
    info = reg.plugins["dup"]
    assert info.error.startswith("was not loaded: entry point 'dup'")
    assert "dist-alpha 1.0" in info.error and "dist-beta 2.0" in info.error
    assert [r.distribution for r in info.rivals] == ["dist-beta"]
    assert any("dist-alpha" in c and "dist-beta" in c for c in reg.collisions)
    assert "dup.good" not in reg.losses
    with pytest.raises(PluginError, match="dist-alpha 1.0.*dist-beta 2.0"):
        reg.loss("dup.good")
    assert reg.loss("fine.good") is GoodLoss  # the other plugins keep working


def test_the_core_keeps_its_entry_point_name_against_a_third_party(installed):
    installed(FakeEntryPoint("core", "distillkit", core_plugin(), version="0.1.0"),
              FakeEntryPoint("core", "some-plugin", plugin(register_backbones=registers("backbones",
                                                                                        ThirdPartyFamily))))
    reg = Registry.discover()
    assert reg.backbone("sd15") is CoreFamily
    [message] = reg.collisions
    assert "distillkit 0.1.0" in message and "some-plugin 1.0" in message and "was not loaded" in message


# -- registered names -----------------------------------------------------------------------------


def test_a_name_registered_twice_by_one_plugin_is_unusable_and_both_classes_named(installed):
    # Before: the first class silently won, so validate and run used it.
    installed(FakeEntryPoint("mine", "dist-mine", plugin(register_losses=registers("losses", OneLoss, OtherLoss,
                                                                                   GoodLoss))))
    reg = Registry.discover()
    with pytest.raises(PluginError) as info:
        reg.loss("mine.twin")
    assert "OneLoss" in str(info.value) and "OtherLoss" in str(info.value) and "'mine'" in str(info.value)
    assert "mine.twin" not in reg.losses and reg.loss("mine.good") is GoodLoss
    assert any("OneLoss" in c and "OtherLoss" in c for c in reg.collisions)


def test_registering_the_same_class_twice_is_harmless(installed):
    installed(FakeEntryPoint("mine", "dist-mine", plugin(register_losses=registers("losses", GoodLoss, GoodLoss))))
    reg = Registry.discover()
    assert reg.loss("mine.good") is GoodLoss and not reg.collisions and not reg.problems


@pytest.mark.parametrize("third_party_name", ["aaa", "zzz"])  # before or after 'core' in pluggy's order
def test_a_third_party_sd15_does_not_take_over_the_cores(installed, third_party_name):
    # Before: whichever registered first won, and `distillkit plugins` blamed core for the duplicate.
    installed(FakeEntryPoint("core", "distillkit", core_plugin(), version="0.1.0"),
              FakeEntryPoint(third_party_name, "thirdparty-dist",
                             plugin(register_backbones=registers("backbones", ThirdPartyFamily))),
              FakeEntryPoint("fine", "dist-fine", good_plugin()))
    reg = Registry.discover()
    assert reg.backbone("sd15") is CoreFamily
    assert reg.origin[("backbone", "sd15")] == "core"
    assert reg.provided_by(third_party_name, "backbone") == []
    [message] = reg.collisions
    assert "thirdparty-dist 1.0" in message and "distillkit 0.1.0" in message and "replace=True" in message
    assert reg.loss("fine.good") is GoodLoss


@pytest.mark.parametrize("third_party_name", ["aaa", "zzz"])
def test_replace_true_takes_a_name_over_and_is_recorded(installed, third_party_name):
    installed(FakeEntryPoint("core", "distillkit", core_plugin(), version="0.1.0"),
              FakeEntryPoint(third_party_name, "thirdparty-dist",
                             plugin(register_backbones=registers("backbones", ThirdPartyFamily, replace=True))))
    reg = Registry.discover()
    assert reg.backbone("sd15") is ThirdPartyFamily
    assert reg.origin[("backbone", "sd15")] == third_party_name
    assert reg.replaced[("backbone", "sd15")] == ["core"]
    assert reg.replaced_from("core", "backbone") == {"sd15": third_party_name}
    assert not reg.collisions


def test_two_third_parties_claiming_one_family_leave_it_unusable(installed):
    installed(FakeEntryPoint("one", "dist-one", plugin(register_backbones=registers("backbones", ThirdPartyFamily))),
              FakeEntryPoint("two", "dist-two",
                             plugin(register_backbones=registers("backbones", OtherThirdPartyFamily))),
              FakeEntryPoint("fine", "dist-fine", good_plugin()))
    reg = Registry.discover()
    with pytest.raises(PluginError) as info:
        reg.backbone("sd15")
    assert "'one' (dist-one 1.0)" in str(info.value) and "'two' (dist-two 1.0)" in str(info.value)
    assert reg.loss("fine.good") is GoodLoss


# -- broken plugins -------------------------------------------------------------------------------


def test_a_misspelt_hook_leaves_out_that_plugin_only(installed):
    # Before: pm.check_pending() raised for the whole manager, so every command failed, `plugins` included.
    typo = plugin(register_loss=registers("losses", GoodLoss))
    installed(FakeEntryPoint("typo", "dist-typo", typo), FakeEntryPoint("fine", "dist-fine", good_plugin()))
    pm, infos = make_plugin_manager()
    assert infos["typo"].error.startswith("was not loaded: it implements unknown hook 'register_loss'")
    assert "did you mean 'register_losses'?" in infos["typo"].error
    assert pm.get_plugin("typo") is None and pm.get_plugin("fine") is not None
    reg = Registry.from_manager(pm, infos)
    assert reg.loss("fine.good") is GoodLoss
    with pytest.raises(PluginError, match="plugin 'typo' \\(dist-typo 1.0\\) was not loaded: it implements unknown hook"):
        reg.loss("typo.good")


def test_a_hook_with_a_wrong_signature_leaves_out_that_plugin_only(installed):
    def register_losses(register, extra):  # the spec has no 'extra'
        register(GoodLoss)
    installed(FakeEntryPoint("bad", "dist-bad", plugin(register_losses=register_losses)),
              FakeEntryPoint("fine", "dist-fine", good_plugin()))
    reg = Registry.discover()
    assert reg.plugins["bad"].error.startswith("was not loaded:") and "extra" in reg.plugins["bad"].error
    assert reg.loss("fine.good") is GoodLoss


def test_a_misspelt_hook_in_an_extra_plugin_is_isolated_too():
    reg = Registry.discover(extra_plugins={"typo": plugin(register_critic=registers("critics")),
                                           "fine": good_plugin()}, autoload=False)
    assert "register_critic" in reg.plugins["typo"].error and reg.loss("fine.good") is GoodLoss


def test_an_import_failure_keeps_its_traceback(installed):
    def explode():
        raise ImportError("libfoo.so: cannot open shared object file")
    try:
        explode()
    except ImportError as exc:
        error = exc
    installed(FakeEntryPoint("broken", "dist-broken", error=error), FakeEntryPoint("fine", "dist-fine", good_plugin()))
    reg = Registry.discover()
    info = reg.plugins["broken"]
    assert info.error == "failed to import: ImportError: libfoo.so: cannot open shared object file"
    assert "Traceback" in info.traceback and "in explode" in info.traceback
    assert reg.loss("fine.good") is GoodLoss
    with pytest.raises(PluginError, match="plugin 'broken' \\(dist-broken 1.0\\) failed to import: ImportError"):
        reg.loss("broken.x")


def test_an_extra_plugin_may_not_take_an_installed_name(installed):
    installed(FakeEntryPoint("fine", "dist-fine", good_plugin()))
    with pytest.raises(PluginError, match="'fine' \\(dist-fine 1.0\\)"):
        Registry.discover(extra_plugins={"fine": good_plugin()})


# -- the registry carries its manager ---------------------------------------------------------------


def test_the_registry_carries_the_manager_whose_runtime_hooks_reach_extra_plugins():
    seen = []

    class Callback:
        @distillkit.hookimpl
        def on_step_end(self, engine, step, metrics):
            seen.append(step)

    reg = Registry.discover(extra_plugins={"cb": Callback(), "fine": good_plugin()}, autoload=False)
    reg.pm.hook.on_step_end(engine=None, step=7, metrics={})
    assert seen == [7]


def test_discover_without_plugins_is_empty_not_broken():
    reg = Registry.discover(autoload=False)
    assert reg.losses == {} and reg.problems == [] and reg.pm is not None
    with pytest.raises(PluginError, match="unknown loss 'x.y'; no plugin 'x' is installed"):
        reg.loss("x.y")


def test_a_plugin_registering_sd15_twice_does_not_cost_the_core_its_family(installed):
    installed(FakeEntryPoint("core", "distillkit", core_plugin(), version="0.1.0"),
              FakeEntryPoint("sloppy", "sloppy-dist",
                             plugin(register_backbones=registers("backbones", ThirdPartyFamily, OtherThirdPartyFamily))))
    reg = Registry.discover()
    assert reg.backbone("sd15") is CoreFamily
    [message] = reg.collisions
    assert "'sloppy' (sloppy-dist 1.0) registered model family 'sd15' twice" in message
    assert "ThirdPartyFamily and OtherThirdPartyFamily" in message
