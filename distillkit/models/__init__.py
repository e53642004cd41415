"""Model families (backbones), the conditioning they produce, and the helpers that load them.

The three built-in backbones import diffusers and transformers (seconds of start-up), so they are
resolved on first access: ``import distillkit`` and ``distillkit validate`` stay fast.
"""

from __future__ import annotations

import importlib

from distillkit.models.backbone import Backbone
from distillkit.models.conditioning import Conditioning
from distillkit.models.loading import (check_source, check_tokenizer, load_component, load_config,
                                       load_pipeline_config, load_scheduler, load_tokenizer, resolve_dtype)

_LAZY = {
    "SD15Backbone": "distillkit.models.sd15",
    "SDXLBackbone": "distillkit.models.sdxl",
    "PixelBackbone": "distillkit.models.pixel",
}

__all__ = [
    "Backbone", "Conditioning", "PixelBackbone", "SD15Backbone", "SDXLBackbone", "check_source",
    "check_tokenizer", "load_component", "load_config", "load_pipeline_config", "load_scheduler", "load_tokenizer",
    "resolve_dtype",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
