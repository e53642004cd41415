"""Names → classes for losses, critics and model families, gathered through the ``register_*`` hooks.

Each plugin's hook implementation is called with a ``register`` callback bound to that plugin's
name, so loss and critic names are namespaced (``add.adversarial``). Model family names are global
(``sd15``), so two plugins can claim one. No name ever changes hands silently:

* one plugin registering two classes under one name: neither counts (the name is unusable unless
  another plugin's claim to it stands);
* a second plugin registering a taken name: ignored if the name is the core's, unusable if both are
  third parties (which one wins would depend on install order), reported either way;
* ``register(cls, replace=True)`` is the explicit opt-in to take over another plugin's name; it is
  recorded (:attr:`Registry.replaced`) and shown by ``distillkit plugins``.

All registrations are collected before any is decided, so the outcome never depends on the order in
which pluggy calls the plugins. Unknown names get a did-you-mean.
"""

from __future__ import annotations

import difflib
import traceback
from dataclasses import dataclass, field

import pluggy

from distillkit.errors import PluginError
from distillkit.losses.base import Loss
from distillkit.models.backbone import Backbone
from distillkit.plugins import PluginInfo, make_plugin_manager
from distillkit.roles.critic import Critic

#: the core's own plugin: its names are never displaced without ``replace=True``
HOST_PLUGIN = "core"
#: kind -> (base class, attribute holding the short name, how messages call it)
KINDS = {"loss": (Loss, "name", "loss"), "critic": (Critic, "name", "critic"),
         "backbone": (Backbone, "family", "model family")}


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Registration:
    plugin: str
    kind: str
    key: str
    obj: type
    replace: bool = False


@dataclass
class Registry:
    losses: dict[str, type[Loss]] = field(default_factory=dict)
    critics: dict[str, type[Critic]] = field(default_factory=dict)
    backbones: dict[str, type[Backbone]] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    #: registration problems, per plugin (a hook raised, or registered something invalid)
    problems: list[str] = field(default_factory=list)
    #: (problem, traceback) for problems raised as exceptions (``distillkit plugins --verbose``)
    tracebacks: list[tuple[str, str]] = field(default_factory=list)
    #: every name collision (entry points and registered names), each naming both parties
    collisions: list[str] = field(default_factory=list)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin that registered it
    #: (kind, name) -> plugins whose registration of that name was taken over with ``replace=True``
    replaced: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: (kind, name) -> why no plugin gets that name; looking it up raises this message
    unusable: dict[tuple[str, str], str] = field(default_factory=dict)
    #: the plugin manager the registry was built from: its runtime hooks (``on_step_end``...) are the ones
    #: an engine built with this registry must call, so a caller's extra plugins receive them too
    pm: pluggy.PluginManager | None = None

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_manager(cls, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo] | None = None) -> "Registry":
        reg = cls(plugins=dict(plugins or {}), pm=pm)
        for info in reg.plugins.values():
            reg.collisions.extend(info.collisions)
            if info.rivals and info.error:  # an entry-point name no one got
                reg.collisions.append(info.error.removeprefix("was not loaded: "))
        registrations: list[Registration] = []
        for hook, kind in (("register_losses", "loss"), ("register_critics", "critic"),
                           ("register_backbones", "backbone")):
            for impl in getattr(pm.hook, hook).get_hookimpls():
                reg._call(impl, kind, registrations)
        reg._settle(registrations)
        return reg

    @classmethod
    def discover(cls, extra_plugins: dict[str, object] | None = None, **kwargs) -> "Registry":
        pm, infos = make_plugin_manager(extra_plugins, **kwargs)
        return cls.from_manager(pm, infos)

    def _call(self, impl, kind: str, registrations: list[Registration]) -> None:
        plugin = impl.plugin_name

        def register(obj, *, replace: bool = False):
            try:
                registrations.append(self._check(plugin, kind, obj, bool(replace)))
            except PluginError as exc:  # one bad class; the plugin's other registrations still count
                self.problems.append(str(exc))

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            problem = f"plugin {plugin!r} failed in its {kind} registration: {type(exc).__name__}: {exc}"
            self.problems.append(problem)
            self.tracebacks.append((problem, traceback.format_exc()))

    @staticmethod
    def _check(plugin: str, kind: str, obj, replace: bool) -> Registration:
        base, attr, _ = KINDS[kind]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"plugin {plugin!r} registered {obj!r} as a {kind}, but it is not a subclass "
                              f"of distillkit.{base.__name__}")
        short = getattr(obj, attr, None)
        if not short or not isinstance(short, str):
            raise PluginError(f"plugin {plugin!r}: {kind} class {obj.__name__} has no {attr!r}")
        key = short if kind == "backbone" else f"{plugin}.{short}"
        return Registration(plugin, kind, key, obj, replace)

    def _who(self, plugin: str) -> str:
        info = self.plugins.get(plugin)
        return info.label() if info is not None else repr(plugin)

    def _settle(self, registrations: list[Registration]) -> None:
        """Decide every name once all are known (see the module docstring for the rules)."""
        groups: dict[tuple[str, str], list[Registration]] = {}
        for r in registrations:
            same = groups.setdefault((r.kind, r.key), [])
            if not any(s.plugin == r.plugin and s.obj is r.obj for s in same):  # registering twice is harmless
                same.append(r)
        for (kind, key), regs in groups.items():
            winner, messages = self._decide(kind, key, regs)
            self.collisions.extend(messages)
            if winner is None:
                self.unusable[(kind, key)] = " ".join(messages)
                continue
            self._table(kind)[key] = winner.obj
            self.origin[(kind, key)] = winner.plugin
            losers = sorted({r.plugin for r in regs} - {winner.plugin})
            if winner.replace and losers:
                self.replaced[(kind, key)] = losers

    def _decide(self, kind: str, key: str, regs: list[Registration]) -> tuple[Registration | None, list[str]]:
        """(the registration that gets the name, or None; the messages, each naming every party)."""
        what = f"{KINDS[kind][2]} {key!r}"
        if len({id(r.obj) for r in regs}) == 1:  # several plugins, one class: nothing to choose
            host = [r for r in regs if r.plugin == HOST_PLUGIN]
            return (host or regs)[0], []
        by_plugin: dict[str, list[Registration]] = {}
        for r in regs:
            by_plugin.setdefault(r.plugin, []).append(r)
        messages = []
        for plugin, rs in by_plugin.items():  # a plugin that registered two classes under one name has no claim
            if len(rs) > 1:
                classes = " and ".join(r.obj.__qualname__ for r in rs)
                messages.append(f"plugin {self._who(plugin)} registered {what} twice ({classes}); names must be "
                                f"unique, so neither is used: rename one of the classes' {KINDS[kind][1]!r}")
        claims = {plugin: rs[0] for plugin, rs in by_plugin.items() if len(rs) == 1}
        names = " and ".join(self._who(p) for p in sorted(claims))
        replacing = [r for r in claims.values() if r.replace]
        if len(replacing) == 1:
            return replacing[0], messages
        if len(replacing) > 1:
            return None, messages + [f"{what} is registered with replace=True by {names}; only one plugin may take "
                                     f"a name over, so neither is used: uninstall or block one "
                                     f"(DISTILLKIT_BLOCK_PLUGINS)"]
        if HOST_PLUGIN in claims:
            others = ", ".join(self._who(p) for p in sorted(claims) if p != HOST_PLUGIN)
            if others:
                messages.append(f"plugin {others} registered {what}, which plugin {self._who(HOST_PLUGIN)} already "
                                f"provides; the core's is kept and the other ignored. A plugin that means to "
                                f"take a name over registers it with register(cls, replace=True)")
            return claims[HOST_PLUGIN], messages
        if len(claims) == 1:  # the only valid claim (the others registered the name twice)
            return next(iter(claims.values())), messages
        if not claims:
            return None, messages
        return None, messages + [f"{what} is registered by {names}; neither is used, because which one wins would "
                                 f"depend on install order: uninstall one, or the one meant to win registers it "
                                 f"with register(cls, replace=True)"]

    def _table(self, kind: str) -> dict:
        return {"loss": self.losses, "critic": self.critics, "backbone": self.backbones}[kind]

    def provided_by(self, plugin: str, kind: str) -> list[str]:
        """Names of the ``kind`` ("loss", "critic", "backbone") items that ``plugin`` registered."""
        return sorted(name for (k, name), p in self.origin.items() if k == kind and p == plugin)

    def replaced_from(self, plugin: str, kind: str) -> dict[str, str]:
        """Names ``plugin`` registered that another plugin took over with ``replace=True`` -> that plugin."""
        return {name: self.origin[(k, name)] for (k, name), losers in self.replaced.items()
                if k == kind and plugin in losers}

    # -- lookup -----------------------------------------------------------------------------------
    def plugin_hint(self, name: str) -> str:
        """Why ``<plugin>.<name>`` may be missing: its plugin failed (and how), or is not installed; else ""."""
        plugin = name.split(".", 1)[0]
        info = self.plugins.get(plugin)
        if info is not None and info.error:
            return f"; plugin {info.label()} {info.error.splitlines()[0]}"
        if "." in name and plugin not in self.plugins:
            return f"; no plugin {plugin!r} is installed (pip install it, or check DISTILLKIT_BLOCK_PLUGINS)"
        return ""

    def _get(self, table: dict, kind: str, name: str):
        if name in table:
            return table[name]
        if (kind, name) in self.unusable:
            raise PluginError(self.unusable[(kind, name)])
        hint = self.plugin_hint(name) or suggest(name, table)
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(f"unknown {KINDS[kind][2]} {name!r}{hint} (known: {known})")

    def loss(self, name: str) -> type[Loss]:
        return self._get(self.losses, "loss", name)

    def critic(self, name: str) -> type[Critic]:
        return self._get(self.critics, "critic", name)

    def backbone(self, name: str) -> type[Backbone]:
        return self._get(self.backbones, "backbone", name)
