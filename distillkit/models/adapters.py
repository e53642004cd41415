"""Named LoRA adapters on one frozen UNet, and the handle through which each role calls it.

A LoRA student and a LoRA fake-score network need no UNet of their own: both can be adapters on the
teacher's frozen weights, so an SDXL run holds one 2.6B-parameter UNet instead of three. Which adapter
is active is then a property of the *call*, not of the module: the teacher calls the base alone, the
student with adapter ``student``, the fake score with ``fake_score``.

peft's ``set_adapter`` (and diffusers' ``enable_adapters``/``disable_adapters`` built on it) also flips
``requires_grad`` of the adapters' weights, which would silently undo the engine's phase-wise freezing.
So switching here sets only the active-adapter list of each peft layer, the attribute its ``forward``
reads, and restores the previous list on exit. The rule that makes direct module calls safe: outside
a role's call, no adapter is active, so the bare module is the teacher.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch

#: the peft layers of each UNet that carries adapters (found once; refreshed when an adapter is added)
_TUNER_LAYERS: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def _tuner_layers(unet: torch.nn.Module) -> list:
    layers = _TUNER_LAYERS.get(unet)
    if layers is None:
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # pragma: no cover - peft is a dependency; without it there are no adapters
            return []
        layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        _TUNER_LAYERS[unet] = layers
    return layers


def adapter_names(unet: torch.nn.Module) -> list[str]:
    """The adapters a UNet carries (diffusers/peft keep them in ``peft_config``)."""
    return list(getattr(unet, "peft_config", None) or {})


def current_adapter(unet: torch.nn.Module) -> str | None:
    """The adapter active on ``unet`` right now (None: the base weights alone)."""
    layers = _tuner_layers(unet)
    if not layers:
        return None
    active = layers[0].active_adapters
    return active[0] if active else None


@contextlib.contextmanager
def active_adapter(unet: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Run the body with only adapter ``name`` (None: no adapter, the base weights) active on ``unet``.

    Touches no ``requires_grad`` flag and restores the previous state, so calls nest.
    """
    layers = _tuner_layers(unet)
    if not layers:
        if name is not None:
            raise KeyError(f"the UNet has no adapter {name!r} (it carries none)")
        yield
        return
    if name is not None and name not in adapter_names(unet):
        raise KeyError(f"the UNet has no adapter {name!r} (it has {adapter_names(unet)})")
    wanted = [] if name is None else [name]
    previous = [layer._active_adapter for layer in layers]
    for layer in layers:
        layer._active_adapter = wanted
    try:
        yield
    finally:
        for layer, prev in zip(layers, previous):
            layer._active_adapter = prev


def add_lora(unet: torch.nn.Module, name: str, *, rank: int, alpha: float | None = None,
             target_modules: list[str] | tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0"),
             seed: int | None = None) -> dict[str, torch.nn.Parameter]:
    """Add LoRA adapter ``name`` to ``unet`` and return its parameters by qualified name.

    The adapter's weights are float32 whatever the base's dtype (a bf16 base with fp32 LoRA is the usual
    memory/precision trade), start trainable, and draw their random init from ``seed``. Other adapters'
    ``requires_grad`` flags are left as they were, and afterwards no adapter is active (the base is the
    teacher again).
    """
    from peft import LoraConfig

    from distillkit.utils import seeded

    if name in adapter_names(unet):
        raise ValueError(f"the UNet already has an adapter named {name!r}")
    before = {id(p): p.requires_grad for p in unet.parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                        target_modules=list(target_modules))
    with seeded(seed):
        unet.add_adapter(config, adapter_name=name)
    _TUNER_LAYERS.pop(unet, None)  # new peft layers may have replaced plain ones
    owned = adapter_parameters(unet, name)
    for p in unet.parameters():
        if id(p) in before:
            p.requires_grad_(before[id(p)])
    for p in owned.values():
        p.data = p.data.float()
        p.requires_grad_(True)
    for layer in _tuner_layers(unet):
        layer._active_adapter = []
    return owned


def adapter_parameters(unet: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """Parameters of adapter ``name`` by their qualified names in ``unet`` (what a checkpoint stores)."""
    owned: dict[str, torch.nn.Parameter] = {}
    prefix_of = {id(m): n for n, m in unet.named_modules()}
    for layer in _tuner_layers(unet):
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr, None)
            if holder is None or name not in holder:
                continue
            sub = holder[name]
            base = f"{prefix_of[id(layer)]}.{attr}.{name}"
            if isinstance(sub, torch.nn.Parameter):
                owned[base] = sub
            else:
                owned.update({f"{base}.{n}": p for n, p in sub.named_parameters()})
    if not owned:
        raise KeyError(f"the UNet has no adapter {name!r} (it has {adapter_names(unet)})")
    return owned


class UNetRef:
    """How a role holds a UNet: the module plus the adapter that is active while the role calls it.

    Calling the ref calls the module with that adapter switched on (``adapter=None``: none, which is how
    the teacher calls a shared base). ``parameters()`` and ``config`` pass through, so code written for a
    plain UNet (``Backbone.denoise``, dtype lookups) takes a ref unchanged.
    """

    def __init__(self, module: torch.nn.Module, adapter: str | None = None):
        self.module = module
        self.adapter = adapter

    def active(self):
        return active_adapter(self.module, self.adapter)

    def __call__(self, *args: Any, **kwargs: Any):
        with self.active():
            return self.module(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self.module.parameters(recurse)

    @property
    def config(self):
        return self.module.config

    @property
    def shares_base(self) -> bool:
        """True when this role's weights are an adapter on a module it shares with others."""
        return self.adapter is not None

    def owned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The weights that belong to the role: its adapter's, or all of a module of its own."""
        if self.adapter is not None:
            return adapter_parameters(self.module, self.adapter)
        return dict(self.module.named_parameters())

    def __repr__(self) -> str:
        return f"UNetRef({type(self.module).__name__}, adapter={self.adapter!r})"


def standalone_unet(unet: "UNetRef | torch.nn.Module") -> torch.nn.Module:
    """A plain module computing what ``unet`` computes: the module itself when it has no adapter active,
    else a copy with that adapter folded into the weights and every adapter removed.

    Exported pipelines must load with a plain ``from_pretrained`` that knows nothing of peft layers, and a
    shared base may carry other roles' adapters (a fake score) that must not leak into the export.
    """
    import copy

    if not isinstance(unet, UNetRef):
        unet = UNetRef(unet)
    if not adapter_names(unet.module):
        return unet.module
    merged = copy.deepcopy(unet.module)
    if unet.adapter is not None:
        merged.fuse_lora(adapter_names=[unet.adapter])
    merged.unload_lora()  # swaps each peft layer for its base layer (now holding the fused weights)
    merged.requires_grad_(False)
    return merged


def unwrap(unet: "UNetRef | torch.nn.Module") -> torch.nn.Module:
    return unet.module if isinstance(unet, UNetRef) else unet
