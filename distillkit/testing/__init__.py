"""Test helpers for distillkit and its plugins: tiny offline models, the fixtures that build them, and the
contract suites every loss and critic must pass.

Plugin test suites get the fixtures with ``pytest_plugins = ["distillkit.testing.fixtures"]`` and the
contracts by subclassing :class:`LossContract` / :class:`CriticContract` (see ``docs/plugins.md``).
Names resolve lazily: importing this package costs nothing until a helper is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_tiny_clip_vocab": "distillkit.testing.tokenizer",
    "tiny_clip_tokenizer": "distillkit.testing.tokenizer",
    "build_tiny_pixel": "distillkit.testing.tiny",
    "build_tiny_sd15": "distillkit.testing.tiny",
    "build_tiny_sdxl": "distillkit.testing.tiny",
    "write_shapes_dataset": "distillkit.testing.shapes",
    "LossContract": "distillkit.testing.contract",
    "CriticContract": "distillkit.testing.contract",
    "GradientProbe": "distillkit.testing.probes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
