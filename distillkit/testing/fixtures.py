"""pytest fixtures with tiny SD1.5-, SDXL- and pixel-shaped models, for distillkit's tests and plugins'.

Use with ``pytest_plugins = ["distillkit.testing.fixtures"]`` in a ``conftest.py`` (or a star import).
The folders are written once per session (they are read-only inputs); the loaded backbones are fresh
for every test, so a test that moves or mutates one cannot leak into the next.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from distillkit.testing.tiny import build_tiny_pixel, build_tiny_sd15, build_tiny_sdxl

__all__ = ["tiny_pixel", "tiny_pixel_path", "tiny_sd15", "tiny_sd15_path", "tiny_sdxl", "tiny_sdxl_path"]


@pytest.fixture(scope="session")
def tiny_sd15_path(tmp_path_factory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("tiny_sd15"))


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture(scope="session")
def tiny_pixel_path(tmp_path_factory) -> Path:
    return build_tiny_pixel(tmp_path_factory.mktemp("tiny_pixel"))


@pytest.fixture
def tiny_sd15(tiny_sd15_path):
    from distillkit.models.sd15 import SD15Backbone

    return SD15Backbone.from_pretrained(tiny_sd15_path)


@pytest.fixture
def tiny_sdxl(tiny_sdxl_path):
    from distillkit.models.sdxl import SDXLBackbone

    return SDXLBackbone.from_pretrained(tiny_sdxl_path)


@pytest.fixture
def tiny_pixel(tiny_pixel_path):
    from distillkit.models.pixel import PixelBackbone

    return PixelBackbone.from_pretrained(tiny_pixel_path)
