"""How much memory does each training layout hold? Resident UNet copies and bytes of weights + grads + Adam.

A distillation run holds a frozen teacher and one or two trainable networks of the same architecture: the
student and, for SiD / VSD / DMD2, a fake-score network. Each trainable network is either a full copy of
the teacher (trained in fp32) or a LoRA adapter on the teacher's own frozen UNet (the shared base), which
then exists once in memory for all three roles. This script

1. **counts** weights, gradients and Adam state of five layouts on SD1.5- and SDXL-sized UNets, built from
   their real configs on the meta device (no memory, no download), and prints the table of
   ``benchmarks/README.md``;
2. **measures** the same five layouts on the tiny fixtures: it builds the real engine roles
   (``Engine.setup()``), runs one training step so gradients and Adam moments exist, counts the distinct
   parameter storages, gradient and optimiser-state bytes actually allocated, and checks them against the
   counting model, byte for byte.

The counting model (stated assumptions):

* the frozen teacher is held in bf16 (``model.dtype = "bfloat16"``): 2 bytes per UNet parameter;
* whatever trains is fp32: a full copy has N parameters, a LoRA adapter L (rank 64 on the attention
  projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0``: r·(in + out) per projection);
* per trained parameter: 4 bytes of weight, 4 of gradient, 8 of Adam state (two fp32 moments);
* a full copy is one more resident UNet; an adapter is none. The text encoders, VAE, activations, EMA and
  Adam's per-tensor ``step`` counters (4 bytes per tensor) are outside the count.

It is a sum over roles; the engine frees each role's gradients right after that role's update, so the
gradients of the student and of the fake score are never resident at the same time (the measurement checks
this too: at each optimiser step no other role holds a gradient).

    HF_HUB_OFFLINE=1 python benchmarks/layouts.py              # the tables, then the tiny-fixture check
    HF_HUB_OFFLINE=1 python benchmarks/layouts.py --no-check   # the tables only (a few seconds)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from distillkit.testing.real_configs import SD15_UNET, SDXL_UNET, meta_unet  # noqa: E402


LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # distillkit's default adapter targets
LORA_RANK = 64
FROZEN_BYTES = 2  # bf16 teacher
TRAINED_BYTES = 4  # fp32 weights; the gradient has the same size
ADAM_BYTES = 8  # two fp32 moments per parameter


@dataclass(frozen=True)
class Layout:
    """Which roles train, and how: ``"full"`` (a trainable copy), ``"lora"`` (an adapter on the shared base)."""

    name: str
    student: str
    fake_score: str | None = None

    def roles(self) -> dict[str, str]:
        return {"student": self.student, **({"fake_score": self.fake_score} if self.fake_score else {})}


LAYOUTS = [
    Layout("full student", "full"),
    Layout("LoRA student", "lora"),
    Layout("full student + full fake score", "full", "full"),
    Layout("full student + LoRA fake score (shared base)", "full", "lora"),
    Layout("LoRA student + LoRA fake score (shared base)", "lora", "lora"),
]


# -- the counting model ----------------------------------------------------------------------------------
def lora_parameter_count(unet: torch.nn.Module, rank: int, targets=LORA_TARGETS) -> int:
    """Parameters of one LoRA adapter of ``rank`` on ``unet``: r·(in + out) for every ``nn.Linear`` whose
    qualified name is a target or ends in ``.<target>`` (peft's rule for a list of target names). A layer
    that already carries adapters (a peft wrapper) is counted by the ``base_layer`` it wraps."""
    total = 0
    for name, module in unet.named_modules():
        linear = getattr(module, "base_layer", module)
        if isinstance(linear, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (linear.in_features + linear.out_features)
    return total


@dataclass
class Counted:
    copies: int  # resident UNet-sized weight sets (the frozen teacher included)
    weights: int  # bytes
    grads: int
    adam: int
    grads_by_role: dict[str, int]

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.adam


def count(layout: Layout, unet_params: int, lora_params: int, frozen_bytes: int = FROZEN_BYTES) -> Counted:
    """Weights + gradients + Adam state of ``layout`` on a UNet of ``unet_params`` parameters whose adapter
    has ``lora_params``: the frozen teacher in ``frozen_bytes`` per parameter, everything trained in fp32."""
    trained = {role: unet_params if kind == "full" else lora_params for role, kind in layout.roles().items()}
    n = sum(trained.values())
    return Counted(copies=1 + sum(kind == "full" for kind in layout.roles().values()),
                   weights=unet_params * frozen_bytes + n * TRAINED_BYTES, grads=n * TRAINED_BYTES,
                   adam=n * ADAM_BYTES, grads_by_role={r: k * TRAINED_BYTES for r, k in trained.items()})


def real_size_table(rank: int = LORA_RANK) -> str:
    """The markdown table of ``benchmarks/README.md``: every layout on SD1.5 and SDXL."""
    rows = ["| layout | UNet copies | SD1.5 weights + grads + Adam | SDXL weights + grads + Adam |",
            "|---|---|---|---|"]
    sizes = {}
    for family, config in (("SD1.5", SD15_UNET), ("SDXL", SDXL_UNET)):
        unet = meta_unet(config)
        sizes[family] = (sum(p.numel() for p in unet.parameters()), lora_parameter_count(unet, rank))
    for layout in LAYOUTS:
        cells = []
        for family, (n, lora) in sizes.items():
            c = count(layout, n, lora)
            cells.append(f"{gb(c.total)} ({gb(c.weights)} + {gb(c.grads)} + {gb(c.adam)})")
        rows.append(f"| {layout.name} | {count(layout, 1, 1).copies} | {cells[0]} | {cells[1]} |")
    (n15, l15), (nxl, lxl) = sizes["SD1.5"], sizes["SDXL"]
    head = (f"UNet parameters N: SD1.5 {n15:,}, SDXL {nxl:,}; LoRA rank {rank} on {', '.join(LORA_TARGETS)}: "
            f"L = {l15:,} (SD1.5), {lxl:,} (SDXL). Teacher bf16, trained weights fp32, Adam 2 fp32 moments; "
            f"GB = 10^9 bytes.")
    return head + "\n\n" + "\n".join(rows)


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


# -- measuring on the tiny fixtures ------------------------------------------------------------------------
class _FakeScoreDSM:
    """A plugin with one loss that trains ``core.fake_score`` by denoising score matching, so a fake score
    is built, has gradients and Adam state, like SiD's or DMD2's, without depending on either plugin."""

    @staticmethod
    def loss_class():
        import distillkit

        class FakeScoreDSM(distillkit.Loss):
            name = "fake_score_dsm"
            critics = {"fake_score": "core.fake_score"}

            def critic_loss(self, ctx):
                fake, x0 = ctx.critic, ctx.student_x0
                t = ctx.sample_timesteps(x0.shape[0], 20, 979).to(x0.device)
                loss = fake.denoising_loss(x0, t, ctx.randn_like(x0), ctx.cond)
                return distillkit.LossOutput(loss, {"dsm": loss.detach()})

        return FakeScoreDSM

    def __init__(self):
        import distillkit

        cls = self.loss_class()

        class Plugin:
            @distillkit.hookimpl
            def register_losses(self, register):
                register(cls)

        self.plugin = Plugin()


def layout_recipe(layout: Layout, family: str, model: Path, out: Path, rank: int) -> dict:
    lora = {"rank": rank}
    recipe = {
        "run": {"output_dir": str(out), "max_steps": 1, "sample_every": 0, "checkpoint_every": 10**9,
                "resume": "never", "progress": False},
        "model": {"family": family, "pretrained": str(model), "dtype": "bfloat16"},
        "student": {"timesteps": [999], "input": "noise", **({"lora": lora} if layout.student == "lora" else {})},
        "teacher": {"guidance_scale": 1.0},
        "data": {"prompts": ["a red circle", "a blue square"], "resolution": 32, "batch_size": 2},
        "train": {"device": "cpu", "mixed_precision": "no"},
        "losses": [{"name": "core.regression"}],
    }
    if layout.fake_score:
        recipe["critics"] = [{"name": "core.fake_score", "id": "fake_score",
                              "params": {"lora": lora} if layout.fake_score == "lora" else {}}]
        recipe["losses"].append({"name": "layouts.fake_score_dsm"})
    return recipe


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tensor shared by two roles counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def measure(engine, grads: dict[str, int]) -> Counted:
    """What an engine that has just run a step holds: distinct UNet modules, and bytes of parameter
    storages, gradients (``grads``: recorded by :func:`record_gradients`) and Adam moments."""
    from diffusers import UNet2DConditionModel

    modules = [engine.backbone.teacher_unet, engine.student.unet.module, *engine.critics.values()]
    unets = {id(m): m for root in modules for m in root.modules() if isinstance(m, UNet2DConditionModel)}
    copies = len({m.conv_in.weight.untyped_storage().data_ptr() for m in unets.values()})
    params = [p for root in modules for p in root.parameters()]
    params += [p for c in engine.critics.values() for p in c.trainable_parameters()]  # adopted adapters
    moments = [v for t in engine.trained.values() for p in t.parameters
               for k, v in getattr(t.optimizer, "optimizer", t.optimizer).state.get(p, {}).items()
               if k in ("exp_avg", "exp_avg_sq")]
    return Counted(copies=copies, weights=_storage_bytes(params), grads=sum(grads.values()),
                   adam=_storage_bytes(moments), grads_by_role=grads)


def record_gradients(engine) -> tuple[dict[str, int], dict[str, int]]:
    """Before each optimiser step, note the bytes of that role's gradients (the engine frees them right
    after the update) and of every *other* role's gradients still allocated at that moment. Returns the
    two dicts the hooks fill, role -> bytes."""
    own: dict[str, int] = {}
    others: dict[str, int] = {}
    for name, trained in engine.trained.items():
        inner = getattr(trained.optimizer, "optimizer", trained.optimizer)

        def hook(_opt, _args, _kwargs, name=name):
            def grads(roles):
                return _storage_bytes(p.grad for t in roles for p in t.parameters if p.grad is not None)
            own[name] = grads([engine.trained[name]])
            others[name] = grads([t for n, t in engine.trained.items() if n != name])

        inner.register_step_pre_hook(hook)
    return own, others


def check_tiny(family: str, model: Path, tmp: Path, rank: int = 4, layouts=LAYOUTS) -> list[tuple]:
    """Measure every layout on a tiny fixture and compare with :func:`count`; returns the rows and raises
    ``AssertionError`` naming the layout and the quantity on any difference."""
    from distillkit import Engine
    from distillkit.registry import Registry

    registry = Registry.discover(extra_plugins={"layouts": _FakeScoreDSM().plugin})
    rows = []
    for i, layout in enumerate(layouts):
        engine = Engine.from_recipe(layout_recipe(layout, family, model, tmp / f"{family}-{i}", rank),
                                    registry=registry).setup()
        grads, others = record_gradients(engine)
        metrics = engine.step()
        assert "nonfinite" not in metrics, f"{layout.name}: the step was not finite ({metrics['nonfinite']})"
        assert not any(others.values()), f"{layout.name}: other roles' gradients resident at an update: {others}"
        base = engine.backbone.teacher_unet
        n = sum(p.numel() for name, p in base.named_parameters() if "lora_" not in name)
        expected = count(layout, n, lora_parameter_count(base, rank))
        got = measure(engine, grads)
        for field in ("copies", "weights", "grads", "adam", "grads_by_role"):
            want, have = getattr(expected, field), getattr(got, field)
            assert want == have, f"{family} {layout.name}: {field} counted {want}, measured {have}"
        rows.append((family, layout, got))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=LORA_RANK, help="LoRA rank of the real-size table")
    p.add_argument("--no-check", action="store_true", help="skip the measurement on the tiny fixtures")
    args = p.parse_args(argv)
    print(real_size_table(args.rank))
    if args.no_check:
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    from distillkit.testing.tiny import build_tiny_sd15, build_tiny_sdxl

    print("\nmeasured on the tiny fixtures after one engine step (LoRA rank 4), equal to the count:")
    print(f"{'fixture':<6} {'layout':<46} {'copies':>6} {'weights B':>10} {'grads B':>9} {'Adam B':>9}  grads by role")
    with tempfile.TemporaryDirectory(prefix="distillkit-layouts-") as d:
        tmp = Path(d)
        for family, build in (("sd15", build_tiny_sd15), ("sdxl", build_tiny_sdxl)):
            for fam, layout, got in check_tiny(family, build(tmp / family), tmp):
                print(f"{fam:<6} {layout.name:<46} {got.copies:>6} {got.weights:>10} {got.grads:>9} {got.adam:>9}  "
                      f"{got.grads_by_role}")
    print("every measured value equals the counting model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
