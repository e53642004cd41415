"""Every loss and critic the installed plugins provide passes its contract (composer-style settings tables).

A loss or critic that is installed but missing from its table fails the suite: adding one means saying how
to test it cheaply.
"""

from __future__ import annotations

from distillkit.registry import Registry
from distillkit.testing.contract import CriticContract, LossContract

from tests.contract.dsm_probe import PLUGINS as DSM_PROBE

TINY_DISCRIMINATOR = {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same",
                      "crop_prob": 0.0}

LOSSES: dict[str, dict] = {
    "core.regression": {},
    "core.denoising": {},
    "add.adversarial": {"critic_params": TINY_DISCRIMINATOR},
    "add.distill": {"params": {"space": "pixel"}},
    "sds.sds": {"student_input": "noise"},
    "sds.nfsd": {"student_input": "noise", "params": {"t_min": 150, "t_max": 250}},  # both sides of t = 200
    "sds.vsd": {"student_input": "noise", "critic_params": {"lora": {"rank": 2}}},  # fake score: an adapter
    "sds.dmd2": {"student_input": "noise"},  # fake score: a full copy, as DMD2
    "sds.dmd2_gan": {"student_input": "noise", "critic_params_by_type": {
        "core.fake_score": {"lora": {"rank": 2}}, "core.gan_head": {"num_convs": 1}}},
    "sid.sid": {"student_input": "noise", "student": {"first_input": "sigma_noise"}},  # fake score: a full copy
    "sid.gan": {"student_input": "noise", "params": {"weighting": "none"}},  # alone: no sid.sid weight to share
    "sid.gan_head": {"student_input": "noise", "params": {"weighting": "none"}, "critic_params_by_type": {
        "core.fake_score": {"lora": {"rank": 2}}, "core.gan_head": {"num_convs": 1}}},
    "template.anchored_gan": {"critic_params": {"rank": 2, "head_channels": 8}},  # examples/plugin-template
}

#: critic -> layouts to check, each the contract's settings (a loss that trains it, the critic's params)
CRITICS: dict[str, dict[str, dict]] = {
    "add.discriminator": {"": {"loss": "add.adversarial", "params": TINY_DISCRIMINATOR}},
    "core.fake_score": {
        "copy": {"loss": "probe.fake_score_dsm", "extra_plugins": DSM_PROBE},
        "adapter": {"loss": "probe.fake_score_dsm", "params": {"lora": {"rank": 4}}, "extra_plugins": DSM_PROBE},
    },
    "template.noisy_discriminator": {"": {"loss": "template.anchored_gan",
                                          "params": {"rank": 2, "head_channels": 8}}},  # examples/plugin-template
    "core.gan_head": {"": {"loss": "probe.gan_probe", "extra_plugins": DSM_PROBE,
                           "companions": {"fake_score": {"name": "core.fake_score", "params": {"lora": {"rank": 2}}}}}},
}

_REGISTRY = Registry.discover()
INSTALLED_LOSSES = sorted(_REGISTRY.losses)
INSTALLED_CRITICS = sorted(_REGISTRY.critics)


def test_every_installed_loss_and_critic_has_contract_settings():
    missing = [name for name in INSTALLED_LOSSES if name not in LOSSES]
    missing += [name for name in INSTALLED_CRITICS if name not in CRITICS]
    assert not missing, f"add contract settings for {missing} to LOSSES / CRITICS"


def _name(*parts: str) -> str:
    return "_".join(p.replace(".", "_") for p in parts if p)


for _loss in INSTALLED_LOSSES:
    for _family in ("sd15", "sdxl"):
        globals()[f"Test_{_name(_loss, _family)}"] = type(
            f"Contract_{_name(_loss, _family)}", (LossContract,),
            {"loss": _loss, "family": _family, **LOSSES.get(_loss, {})})

for _critic in INSTALLED_CRITICS:
    for _layout, _settings in CRITICS.get(_critic, {}).items():
        globals()[f"TestCritic_{_name(_critic, _layout)}"] = type(
            f"CriticContract_{_name(_critic, _layout)}", (CriticContract,), {"critic": _critic, **_settings})
