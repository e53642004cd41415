"""Test helpers for distillkit and its plugins: tiny offline models and the pytest fixtures that build them.

Plugin test suites get the fixtures with ``pytest_plugins = ["distillkit.testing.fixtures"]``.
"""

from distillkit.testing.tiny import build_tiny_pixel, build_tiny_sd15, build_tiny_sdxl
from distillkit.testing.tokenizer import build_tiny_clip_vocab, tiny_clip_tokenizer

__all__ = ["build_tiny_clip_vocab", "build_tiny_pixel", "build_tiny_sd15", "build_tiny_sdxl", "tiny_clip_tokenizer"]
