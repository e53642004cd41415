"""Every loss the installed plugins provide passes the contract (composer-style settings table).

A loss that is installed but missing from SETTINGS fails the suite: adding a loss means saying how to
test it cheaply.
"""

from __future__ import annotations

import pytest

from distillkit.registry import Registry
from distillkit.testing.contract import LossContract

TINY_DISCRIMINATOR = {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same",
                      "crop_prob": 0.0}

SETTINGS: dict[str, dict] = {
    "core.regression": {},
    "add.adversarial": {"critic_params": TINY_DISCRIMINATOR},
    "add.distill": {"params": {"space": "pixel"}},
}

INSTALLED = sorted(Registry.discover().losses)


def test_every_installed_loss_has_contract_settings():
    missing = [name for name in INSTALLED if name not in SETTINGS]
    assert not missing, f"add contract settings for {missing} to SETTINGS"


def _contract_class(name: str, family: str):
    settings = SETTINGS.get(name, {})
    return type(f"Contract_{name}_{family}", (LossContract,), {"loss": name, "family": family, **settings})


for _name in INSTALLED:
    for _family in ("sd15", "sdxl"):
        _cls = _contract_class(_name, _family)
        globals()[f"Test_{_name.replace('.', '_')}_{_family}"] = _cls
