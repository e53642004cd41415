"""``benchmarks/layouts.py``: its counting model against hand-derived values, the real UNet sizes, and the
measurement on the tiny fixtures (real engine roles after one step) against the count.

What each check catches: a LoRA role that silently loads a UNet of its own (copies 2 instead of 1, and
its weights counted twice); a trained network kept in bf16 or an optimiser with other state (bytes
differ); adapter weights not owned by their role (no gradient or Adam state for them); a config typo in
the script's SD1.5/SDXL UNets (their published parameter counts).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _layouts():
    """The script as a module (``benchmarks/`` is not a package); registered so its dataclasses resolve."""
    name = "distillkit_benchmark_layouts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "layouts.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_lora_count_by_hand():
    L = _layouts()
    net = torch.nn.Module()
    net.attn = torch.nn.Module()
    net.attn.to_q = torch.nn.Linear(3, 5)  # a target: rank 2 * (3 + 5) = 16
    net.attn.to_out = torch.nn.ModuleList([torch.nn.Linear(5, 7)])  # "to_out.0": 2 * (5 + 7) = 24
    net.proj = torch.nn.Linear(11, 13)  # not a target
    net.not_to_q = torch.nn.Linear(4, 4)  # a name that only ends in the target's letters
    assert L.lora_parameter_count(net, rank=2) == 16 + 24


def test_count_by_hand():
    L = _layouts()
    full_lora = L.Layout("x", "full", "lora")
    c = L.count(full_lora, unet_params=10, lora_params=3)
    # teacher 10 params in bf16 = 20 B; trained 10 + 3 params in fp32 = 52 B of weights, 52 of grads, 104 of Adam
    assert (c.copies, c.weights, c.grads, c.adam) == (2, 72, 52, 104)
    assert c.grads_by_role == {"student": 40, "fake_score": 12}
    both_lora = L.count(L.Layout("y", "lora", "lora"), unet_params=10, lora_params=3)
    assert (both_lora.copies, both_lora.weights, both_lora.total) == (1, 44, 44 + 24 + 48)


def test_real_unet_configs_have_the_published_sizes():
    L = _layouts()
    assert sum(p.numel() for p in L.meta_unet(L.SD15_UNET).parameters()) == 859_520_964
    assert sum(p.numel() for p in L.meta_unet(L.SDXL_UNET).parameters()) == 2_567_463_684


def test_measured_layouts_match_the_count_on_the_tiny_sd15(tiny_sd15_path, tmp_path):
    L = _layouts()
    rows = L.check_tiny("sd15", tiny_sd15_path, tmp_path)  # raises on any difference from the count
    copies = {layout.name: got.copies for _, layout, got in rows}
    assert copies == {"full student": 2, "LoRA student": 1, "full student + full fake score": 3,
                      "full student + LoRA fake score (shared base)": 2,
                      "LoRA student + LoRA fake score (shared base)": 1}
