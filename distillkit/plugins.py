"""Plugin discovery: one fresh pluggy manager per call, fed from the ``distillkit`` entry-point group.

Built-in methods (``add``, ``sid``, ``sds``) and the core's own baselines (``core``) are found exactly
like a third party's plugin: through installed entry points. Two environment switches, as in pytest:

* ``DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry point (pass plugins explicitly instead);
* ``DISTILLKIT_BLOCK_PLUGINS=a,b`` skips the named entry points.

A plugin that fails to import does not break the others: the failure is kept with its distribution
and version, shown by ``distillkit plugins``, and raised only if a recipe asks for that plugin.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field

import pluggy

from distillkit import hookspecs
from distillkit.errors import PluginError

GROUP = "distillkit"


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    error: str | None = None  # import failure, formatted
    hooks: list[str] = field(default_factory=list)


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get("DISTILLKIT_BLOCK_PLUGINS", "").split(",") if n.strip()}


def make_plugin_manager(extra_plugins: dict[str, object] | None = None, autoload: bool | None = None,
                        block: set[str] | None = None) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Return a new manager with every installed plugin registered, and what was found about each.

    ``extra_plugins`` maps names to modules/objects registered in addition (tests, embedding).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    if autoload is None:
        autoload = os.environ.get("DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false")
    blocked = _blocked() | set(block or ())
    if autoload:
        for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in blocked or ep.name in infos:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.metadata["Name"] if dist else None, dist.version if dist else None,
                              ep.value)
            infos[ep.name] = info
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - reported per plugin, others keep working
                info.error = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=-3))
    for name, plugin in (extra_plugins or {}).items():
        if name in blocked:
            continue
        try:
            pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin name {name!r} is already registered: {exc}") from None
        infos[name] = PluginInfo(name, module=getattr(plugin, "__name__", type(plugin).__name__))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (a misspelt hook name? the hooks are listed in distillkit/hookspecs.py)") from None
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm, infos
