"""Names → classes for losses, critics and model families, gathered through the ``register_*`` hooks.

Each plugin's hook implementation is called with a ``register`` callback bound to that plugin's
name, so names are namespaced (``add.adversarial``) and collisions are impossible across plugins and
reported within one. Unknown names get a did-you-mean.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import pluggy

from distillkit.errors import PluginError
from distillkit.losses.base import Loss
from distillkit.models.backbone import Backbone
from distillkit.plugins import PluginInfo, make_plugin_manager
from distillkit.roles.critic import Critic


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass
class Registry:
    losses: dict[str, type[Loss]] = field(default_factory=dict)
    critics: dict[str, type[Critic]] = field(default_factory=dict)
    backbones: dict[str, type[Backbone]] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # registration problems, per plugin
    origin: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin that registered it

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_manager(cls, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo] | None = None) -> "Registry":
        reg = cls(plugins=dict(plugins or {}))
        for hook, kind in (("register_losses", "loss"), ("register_critics", "critic"),
                           ("register_backbones", "backbone")):
            for impl in getattr(pm.hook, hook).get_hookimpls():
                reg._call(impl, kind)
        return reg

    @classmethod
    def discover(cls, extra_plugins: dict[str, object] | None = None, **kwargs) -> "Registry":
        pm, infos = make_plugin_manager(extra_plugins, **kwargs)
        return cls.from_manager(pm, infos)

    def _call(self, impl, kind: str) -> None:
        plugin = impl.plugin_name

        def register(obj):
            self._add(plugin, kind, obj)

        try:
            impl.function(register=register)
        except PluginError as exc:
            self.problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            self.problems.append(f"plugin {plugin!r} failed in its {kind} registration: {type(exc).__name__}: {exc}")

    def _add(self, plugin: str, kind: str, obj) -> None:
        base, table = {"loss": (Loss, self.losses), "critic": (Critic, self.critics),
                       "backbone": (Backbone, self.backbones)}[kind]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"plugin {plugin!r} registered {obj!r} as a {kind}, but it is not a subclass "
                              f"of distillkit.{base.__name__}")
        short = obj.family if kind == "backbone" else obj.name
        if not short or not isinstance(short, str):
            attr = "family" if kind == "backbone" else "name"
            raise PluginError(f"plugin {plugin!r}: {kind} class {obj.__name__} has no {attr!r}")
        key = short if kind == "backbone" else f"{plugin}.{short}"
        if key in table and table[key] is not obj:
            raise PluginError(f"plugin {plugin!r} registered {kind} {key!r} twice "
                              f"({table[key].__qualname__} and {obj.__qualname__}); names must be unique")
        table[key] = obj
        self.origin[(kind, key)] = plugin

    def provided_by(self, plugin: str, kind: str) -> list[str]:
        """Names of the ``kind`` ("loss", "critic", "backbone") items that ``plugin`` registered."""
        return sorted(name for (k, name), p in self.origin.items() if k == kind and p == plugin)

    # -- lookup -----------------------------------------------------------------------------------
    def _plugin_hint(self, name: str) -> str:
        plugin = name.split(".", 1)[0]
        info = self.plugins.get(plugin)
        if info is not None and info.error:
            first = info.error.splitlines()[0]
            dist = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
            return f"; plugin {plugin!r}{dist} failed to import: {first}"
        if "." in name and plugin not in self.plugins:
            return f"; no plugin {plugin!r} is installed (pip install it, or check DISTILLKIT_BLOCK_PLUGINS)"
        return ""

    def _get(self, table: dict, kind: str, name: str):
        if name in table:
            return table[name]
        hint = self._plugin_hint(name) or suggest(name, table)
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(f"unknown {kind} {name!r}{hint} (known: {known})")

    def loss(self, name: str) -> type[Loss]:
        return self._get(self.losses, "loss", name)

    def critic(self, name: str) -> type[Critic]:
        return self._get(self.critics, "critic", name)

    def backbone(self, name: str) -> type[Backbone]:
        return self._get(self.backbones, "model family", name)
