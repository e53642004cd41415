"""Tiny toy-world model folders for the toy tests: an 8×8 world and a UNet of a few thousand parameters,
written through the same folder format a user loads."""

from __future__ import annotations

import pytest

TINY_UNET = dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)


def tiny_world():
    from distillkit.toy.world import default_world

    return default_world(resolution=8)


@pytest.fixture(scope="session")
def toy_folder(tmp_path_factory):
    """A complete toy folder (world + UNet weights) at 8×8: loads as ``toy`` and ``toy_exact``."""
    from distillkit.toy.folder import new_unet, write_toy_folder

    world = tiny_world()
    return write_toy_folder(tmp_path_factory.mktemp("toy") / "teacher", world, new_unet(world, seed=1, **TINY_UNET))


@pytest.fixture(scope="session")
def toy_world_folder(tmp_path_factory):
    """A world folder: the world and a UNet config, no weights."""
    from distillkit.toy.folder import write_toy_folder

    return write_toy_folder(tmp_path_factory.mktemp("toy") / "world", tiny_world(), unet_overrides=TINY_UNET)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    from distillkit.toy.data import write_dataset

    return write_dataset(tiny_world(), tmp_path_factory.mktemp("toy") / "data", count=64, seed=0)


@pytest.fixture(scope="session")
def toy_eps_folder(tmp_path_factory):
    """The tiny world with an ε-prediction scheduler (the shipped toy folders predict v)."""
    from distillkit.toy.folder import default_scheduler, new_unet, write_toy_folder

    world = tiny_world()
    return write_toy_folder(tmp_path_factory.mktemp("toy") / "eps", world, new_unet(world, **TINY_UNET),
                            default_scheduler(prediction_type="epsilon"))
