"""The one extension contract of distillkit: every hook a plugin may implement.

Discovery hooks (``register_*``) are called once per plugin manager with a ``register`` callback; the
host validates what is registered and namespaces it by the plugin's entry-point name, so a loss ``sid``
registered by the plugin ``sid`` is used in recipes as ``sid.sid``. ``register(cls, replace=True)`` is
the one way to take over a name another plugin registers (a model family such as ``sd15``); without it
a clash is reported and never decided by install order. Keep registration cheap: every command, even
``distillkit validate``, runs it, so import heavy libraries (diffusers, timm...) where a model is built. Runtime hooks are called on the
engine's own manager, so callbacks registered on one engine never fire for another. Hooks are called
with keyword arguments only; an implementation may accept any subset of them (pluggy's rule).
"""

from __future__ import annotations

import pluggy

PROJECT = "distillkit"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate plugin functions or methods with this to implement a hook.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_losses(register):
    """Register :class:`distillkit.Loss` subclasses.

    :param register: call ``register(LossClass)`` once per loss. The class needs a ``name`` (unique
        within the plugin) and may carry a pydantic ``Config``; it is referenced in recipes as
        ``<plugin>.<name>``.
    """


@hookspec
def register_critics(register):
    """Register :class:`distillkit.Critic` subclasses (discriminators, fake-score networks...).

    :param register: call ``register(CriticClass)`` once per critic; referenced as ``<plugin>.<name>``.
    """


@hookspec
def register_backbones(register):
    """Register :class:`distillkit.Backbone` subclasses (model families such as ``sd15``, ``sdxl``).

    :param register: call ``register(BackboneClass)``; the family name is ``BackboneClass.family``
        (family names are global, not namespaced, and must be unique). ``register(BackboneClass,
        replace=True)`` takes over a family another plugin registers (recorded, shown by ``distillkit
        plugins``).
    """


@hookspec
def on_setup(engine):
    """The engine has built every role and optimiser and restored any checkpoint; training is about to start."""


@hookspec
def on_step_end(engine, step, metrics):
    """One optimisation step finished. ``metrics`` is the flat dict that was logged (floats)."""


@hookspec
def on_samples(engine, step, images, path):
    """A sample grid was written to ``path``. ``images`` is a float tensor (N, 3, H, W) in [0, 1]."""


@hookspec
def on_checkpoint(engine, step, path):
    """A checkpoint directory was completely and atomically written to ``path``."""


@hookspec
def on_run_end(engine, status):
    """The run ended. ``status`` is one of "completed", "interrupted", "failed"."""
