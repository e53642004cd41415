"""Plugin discovery: one fresh pluggy manager per call, fed from the ``distillkit`` entry-point group.

Built-in methods (``add``, ``sid``, ``sds``) and the core's own baselines (``core``) are found exactly
like a third party's plugin: through installed entry points. Two environment switches, as in pytest:

* ``DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry point (pass plugins explicitly instead);
* ``DISTILLKIT_BLOCK_PLUGINS=a,b`` skips the named entry points.

A broken plugin never breaks the others, and nothing is skipped silently. Each of these is kept on
the plugin's :class:`PluginInfo`, shown by ``distillkit plugins`` and raised only when a recipe asks
for that plugin:

* an import failure (its traceback is kept for ``distillkit plugins --verbose``);
* a hook implementation the manager cannot accept: a misspelt hook name (``register_loss``) or a
  signature that does not match the spec. pluggy would fail the whole manager at ``check_pending``;
  here only that plugin is left out;
* two distributions declaring one entry-point name. The core's own distribution keeps its names; for
  two others, neither is loaded, since choosing one would depend on install order.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field

import pluggy

from distillkit import hookspecs
from distillkit.errors import PluginError

GROUP = "distillkit"
#: the distribution of distillkit itself; its entry points (``core``) are never displaced by another's
HOST_DISTRIBUTION = "distillkit"


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    #: why the plugin is not in use, one sentence first ("failed to import: ...", "was not loaded: ...")
    error: str | None = None
    #: the full traceback of an import failure (``distillkit plugins --verbose``)
    traceback: str | None = None
    hooks: list[str] = field(default_factory=list)
    #: entry-point collisions this plugin survived (another distribution's entry point of its name was refused)
    collisions: list[str] = field(default_factory=list)
    #: other distributions that declare this entry-point name
    rivals: list["PluginInfo"] = field(default_factory=list)

    def label(self) -> str:
        """``'add' (distillkit-add 0.1.0)``: how messages name a plugin, so a user knows what to uninstall."""
        if self.distribution:
            return f"{self.name!r} ({self.distribution} {self.version or '?'})"
        return f"{self.name!r}"


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get("DISTILLKIT_BLOCK_PLUGINS", "").split(",") if n.strip()}


def _info(ep) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(ep.name, dist.metadata["Name"] if dist else None, dist.version if dist else None, ep.value)


def _describe(info: PluginInfo) -> str:
    where = f"{info.distribution} {info.version or '?'}" if info.distribution else "unknown distribution"
    return f"{where} ({info.module})"


def _choose(name: str, candidates: list[PluginInfo]) -> tuple[PluginInfo | None, list[PluginInfo], str | None]:
    """(the one to load or None, the refused ones, the message) for entry points that share ``name``."""
    if len(candidates) == 1:
        return candidates[0], [], None
    host = [c for c in candidates if c.distribution == HOST_DISTRIBUTION]
    everyone = " and ".join(_describe(c) for c in candidates)
    if len(host) == 1:
        refused = [c for c in candidates if c is not host[0]]
        return host[0], refused, (
            f"entry point {name!r} (group {GROUP!r}) is declared by {everyone}; distillkit's own is kept and "
            f"{', '.join(_describe(c) for c in refused)} was not loaded: that plugin must use another "
            f"entry-point name")
    return None, list(candidates), (
        f"entry point {name!r} (group {GROUP!r}) is declared by {everyone}; neither was loaded, because "
        f"which one wins would depend on install order: uninstall one of them ("
        f"{' or '.join(f'pip uninstall {c.distribution}' for c in candidates if c.distribution) or 'pip'}) "
        f"or rename its entry point")


def _unknown_hooks(pm: pluggy.PluginManager, plugin) -> list[str]:
    """Hooks ``plugin`` implements that no spec declares (and that are not marked optional)."""
    return sorted(hc.name for hc in pm.get_hookcallers(plugin) or []
                  if not hc.has_spec() and any(not impl.optionalhook for impl in hc.get_hookimpls()
                                               if impl.plugin is plugin))


def _register(pm: pluggy.PluginManager, plugin, info: PluginInfo) -> bool:
    """Register ``plugin`` as ``info.name``; on a hook problem, leave it out and say why on ``info``."""
    try:
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as exc:  # a hookimpl whose arguments the spec does not have
        if pm.get_plugin(info.name) is plugin:  # older pluggy may leave a half registration behind
            pm.unregister(plugin)
        info.error = f"was not loaded: {exc}"
        return False
    except ValueError as exc:  # the same module object under a second entry-point name
        other = pm.get_name(plugin)
        info.error = (f"was not loaded: its module is already registered as plugin {other!r}"
                      if other else f"was not loaded: {exc}")
        return False
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        specs = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "distillkit_spec")]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, specs, n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        info.error = (f"was not loaded: it implements unknown hook {', '.join(hints)}; the hooks are "
                      f"{', '.join(sorted(specs))} (distillkit/hookspecs.py)")
        return False
    return True


def make_plugin_manager(extra_plugins: dict[str, object] | None = None, autoload: bool | None = None,
                        block: set[str] | None = None) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Return a new manager with every installed plugin registered, and what was found about each.

    ``extra_plugins`` maps names to modules/objects registered in addition (tests, embedding); a name
    already taken by an installed plugin is a :class:`PluginError`.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    if autoload is None:
        autoload = os.environ.get("DISTILLKIT_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false")
    blocked = _blocked() | set(block or ())
    if autoload:
        by_name: dict[str, list[PluginInfo]] = {}
        eps = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            if ep.name in blocked:
                continue
            info = _info(ep)
            by_name.setdefault(ep.name, []).append(info)
            eps[id(info)] = ep
        for name in sorted(by_name):
            candidates = sorted(by_name[name], key=lambda i: (i.distribution or "", i.module or ""))
            chosen, refused, message = _choose(name, candidates)
            if chosen is None:
                info = candidates[0]
                info.error, info.rivals = f"was not loaded: {message}", candidates[1:]
                infos[name] = info
                continue
            infos[name] = chosen
            if message:
                chosen.collisions.append(message)
                chosen.rivals = refused
            try:
                plugin = eps[id(chosen)].load()
            except Exception as exc:  # noqa: BLE001 - reported per plugin, others keep working
                chosen.error = f"failed to import: {type(exc).__name__}: {exc}"
                chosen.traceback = traceback.format_exc()
                continue
            _register(pm, plugin, chosen)
    for name, plugin in (extra_plugins or {}).items():
        if name in blocked:
            continue
        if pm.get_plugin(name) is not None:
            raise PluginError(f"plugin name {name!r} is already registered by {infos[name].label()}; "
                              f"pass the extra plugin under another name")
        info = PluginInfo(name, module=getattr(plugin, "__name__", type(plugin).__name__))
        infos[name] = info
        _register(pm, plugin, info)
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm, infos
