"""Memory savers, each switched on by one recipe key and applied to the built roles at set-up.

| recipe key | what it does | costs |
|---|---|---|
| ``train.gradient_checkpointing`` | the student's and every critic's diffusers networks recompute their blocks' activations in the backward pass | ~30 % more compute per trained pass |
| ``model.dtype`` + ``train.mixed_precision`` | frozen networks (teacher, VAE, text encoders, critics' frozen feature networks) stored in bf16/fp16; trainable weights stay fp32 under autocast | rounding of the frozen networks |
| ``optim.eight_bit`` | 8-bit Adam(W) states from bitsandbytes (optional extra) | quantised moments |
| ``student.ema.offload`` | the EMA copy in CPU memory | a device-to-host copy per update |
| ``data.cache_text_embeddings`` | every prompt encoded once at start; the text encoders then leave the accelerator | CPU memory for the embeddings |
| ``model.teacher_offload`` | the frozen teacher UNet's weights live in CPU memory and visit the accelerator one block at a time | host-device traffic per call |
| ``train.attention`` | "sdpa": fused scaled-dot-product attention (no B·h·N² matrix kept); "eager": the classic one | |
| ``train.compile`` | ``torch.compile`` of the UNets (in place) | compile time at the first steps |

Why a custom checkpoint function: a role on a shared base UNet calls it with its LoRA adapter switched on
only *during its own forward call* (:class:`~distillkit.models.adapters.UNetRef`). Plain non-reentrant
checkpointing recomputes the blocks in the backward pass, after that switch is undone, so the recomputed
forward is the teacher's: torch then fails the backward pass (the recomputation saved other tensors),
or, where the saved tensors happen to agree, the adapter gets wrong gradients. The function here
records which adapter was active and switches it on again for the recomputation.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

import torch

from distillkit.engine.ema import EMA
from distillkit.errors import RecipeError
from distillkit.models.adapters import active_adapter, current_adapter, unwrap


# -- which networks -----------------------------------------------------------------------------------
def diffusers_models(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost diffusers models (UNets, VAEs) in ``module``'s tree, ``module`` included."""
    from diffusers import ModelMixin

    found, inside = [], set()
    for m in module.modules():
        if isinstance(m, ModelMixin) and id(m) not in inside:
            found.append(m)
            inside.update(id(x) for x in m.modules())
    return found


def trained_networks(roles) -> list[torch.nn.Module]:
    """Diffusers networks whose weights (or adapters) a trained role updates: the student's UNet (the shared
    base for a LoRA student) and each critic's (its own copy, or the base it has an adapter on)."""
    seen, out = set(), []
    nets = [unwrap(roles.student.unet)]
    for critic in roles.critics.values():
        nets += diffusers_models(critic)
        nets += [ref.module for ref in getattr(critic, "_adopted", {}).values()]
    for n in nets:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


def all_networks(roles) -> list[torch.nn.Module]:
    """Every diffusers network of the run: the backbone's frozen ones and the trained ones."""
    seen, out = set(), []
    for n in [*roles.backbone.frozen_modules().values(), *trained_networks(roles)]:
        for m in diffusers_models(n):
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


# -- gradient checkpointing ---------------------------------------------------------------------------
def adapter_aware_checkpoint(unet: torch.nn.Module):
    """A ``gradient_checkpointing_func`` for diffusers that re-activates the adapter that was active in the
    forward pass when the block is recomputed in the backward pass (see the module docstring)."""
    from torch.utils.checkpoint import checkpoint

    def fn(block, *args):
        adapter = current_adapter(unet)

        def run(*inputs):
            with active_adapter(unet, adapter):
                return block(*inputs)

        return checkpoint(run, *args, use_reentrant=False)

    return fn


def enable_gradient_checkpointing(roles) -> list[torch.nn.Module]:
    """Checkpoint the blocks of every trained network (frozen-only networks hold no activations for a
    trainable parameter's gradient; a shared base is checkpointed for the adapters on it)."""
    done = []
    for net in trained_networks(roles):
        if getattr(net, "_supports_gradient_checkpointing", False):
            net.enable_gradient_checkpointing(adapter_aware_checkpoint(net))
            done.append(net)
    return done


# -- precision of the frozen networks ----------------------------------------------------------------
def cast_frozen_critic_parts(roles, dtype: torch.dtype) -> list[str]:
    """Critics' frozen sub-networks (an ADD feature network) in ``dtype``, as the backbone's frozen networks
    are; trainable heads stay fp32. Used only under mixed precision, where autocast handles the mixed
    dtypes at their boundary. Returns the cast modules' names."""
    cast = []
    for cid, critic in roles.critics.items():
        owned = {id(p) for p in critic.trainable_parameters()}
        for name, m in critic.named_children():
            params = list(m.parameters())
            if params and not any(id(p) in owned for p in params) and params[0].is_floating_point():
                m.to(dtype)
                cast.append(f"{cid}.{name}")
    return cast


# -- 8-bit Adam -----------------------------------------------------------------------------------------
def eight_bit_adam(field: str, weight_decay: float):
    """bitsandbytes' Adam8bit / AdamW8bit class, or a :class:`RecipeError` that says how to get it."""
    try:
        import bitsandbytes as bnb
    except Exception as err:  # ImportError, or a broken native library
        raise RecipeError([f"{field}.eight_bit = true needs the bitsandbytes package, which could not be "
                           f"imported ({type(err).__name__}: {err}). Install it with "
                           f"`pip install 'distillkit[bnb]'` (or `pip install bitsandbytes`), or set "
                           f"{field}.eight_bit = false"]) from None
    return bnb.optim.AdamW8bit if weight_decay > 0 else bnb.optim.Adam8bit


# -- EMA on the CPU -----------------------------------------------------------------------------------
class OffloadedEMA(EMA):
    """The student's EMA held in CPU memory (fp32): for a full SDXL student that is 10 GB of accelerator
    memory freed, for one device-to-host copy of the weights per update."""

    def _as_shadow(self, p: torch.Tensor) -> torch.Tensor:
        return p.detach().float().cpu()


def make_ema(student, cfg) -> Optional[EMA]:
    """The student's EMA as ``[student.ema]`` says (None without one; on the CPU with ``offload``)."""
    if cfg is None:
        return None
    cls = OffloadedEMA if cfg.offload else EMA
    return cls(student.named_parameters(), cfg.decay, cfg.rampup)


# -- text-embedding cache -----------------------------------------------------------------------------
class TextEmbeddingCache:
    """Every prompt the run will encode, encoded once at start and kept in CPU memory (in the frozen
    dtype); the text encoders then move to the CPU. ``backbone.encode_prompts`` answers from the cache,
    so every caller (the step, losses, critics) sees identical conditioning; a prompt not seen at start is
    encoded live on the CPU encoders (correct, only slow)."""

    def __init__(self, backbone, resolution: int, prompts: Iterable[str], device: torch.device,
                 chunk: int = 64):
        self.backbone, self.device = backbone, torch.device(device)
        self.live = backbone.encode_prompts  # the bound method, before it is replaced
        self.rows: dict[tuple[str, int], object] = {}
        self.hits = self.misses = 0
        unique = list(dict.fromkeys(["", *prompts]))
        for i in range(0, len(unique), chunk):
            part = unique[i:i + chunk]
            cond = self.live(part, resolution).to("cpu")
            for j, p in enumerate(part):
                self.rows[(p, int(resolution))] = cond[j:j + 1]
        self.encoders = {n: m for n, m in backbone.frozen_modules().items() if n.startswith("text_encoder")}
        for m in self.encoders.values():
            m.to("cpu")
        backbone.encode_prompts = self.encode

    def encode(self, prompts, resolution: int):
        from distillkit.models.conditioning import Conditioning

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if (p, int(resolution)) not in self.rows]
        if missing:
            self.misses += len(missing)
            with self._encoders_on_cpu():
                cond = self.live(missing, resolution).to("cpu")
            for j, p in enumerate(missing):
                self.rows[(p, int(resolution))] = cond[j:j + 1]
        self.hits += len(prompts) - len(missing)
        return Conditioning.cat([self.rows[(p, int(resolution))] for p in prompts]).to(self.device)

    @contextlib.contextmanager
    def _encoders_on_cpu(self) -> Iterator[None]:
        """The backbone feeds token ids to its own device: point it at the CPU while encoding a miss."""
        before = self.backbone.device
        self.backbone.device = torch.device("cpu")
        try:
            yield
        finally:
            self.backbone.device = before


def all_prompts(data, sample_prompts: list[str]) -> list[str]:
    """The prompts a run can draw: the prompt list or the dataset's captions (every caption of an item
    with several), and the sample grid's."""
    out = list(sample_prompts)
    if getattr(data, "prompts", None) is not None:
        return list(data.prompts) + out
    source = data.dataset.source
    if hasattr(source, "records"):  # an image folder: captions were read when it was checked
        captions = [rec.caption for rec in source.records]
    elif hasattr(source, "ds"):  # a datasets table: the caption column alone, without decoding images
        captions = list(source.ds[source.caption_column])
    else:
        raise RecipeError(["data.cache_text_embeddings = true: this data source does not list its captions up "
                           "front, so they cannot be encoded at start; set it to false"])
    for c in captions:
        out += list(c) if isinstance(c, (list, tuple)) else [c]
    return out


# -- teacher offload ------------------------------------------------------------------------------------
def offload_units(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's top-level blocks: its children, with module lists (down/up blocks) opened up, since a
    ``ModuleList`` is never called itself and its hooks would never fire."""
    units = []
    for child in unet.children():
        units += list(child) if isinstance(child, torch.nn.ModuleList) else [child]
    return units


class BlockOffload:
    """The frozen weights of ``unet`` live on ``offload`` (the CPU) and visit ``device`` one top-level block
    at a time, for the duration of that block's forward. Trainable adapter weights on a shared base are
    left where they are (their optimiser state lives with them). In a backward pass through the
    teacher's input the weights used are still held by the autograd graph, so gradients are exact."""

    def __init__(self, unet: torch.nn.Module, device: torch.device, offload: str = "cpu"):
        self.device, self.offload = torch.device(device), torch.device(offload)
        self.moves = 0
        self.handles = []
        for child in offload_units(unet):
            frozen = [p for p in child.parameters() if not p.requires_grad]
            if not frozen:
                continue
            self._place(frozen, self.offload)
            self.handles.append(child.register_forward_pre_hook(lambda m, a, ps=frozen: self._place(ps, self.device)))
            self.handles.append(child.register_forward_hook(lambda m, a, o, ps=frozen: self._place(ps, self.offload)))

    def _place(self, params: list[torch.nn.Parameter], device: torch.device) -> None:
        self.moves += 1
        with torch.no_grad():
            for p in params:
                if p.device != device:
                    p.data = p.data.to(device, non_blocking=True)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# -- attention and compile ---------------------------------------------------------------------------
def set_attention(networks: Iterable[torch.nn.Module], kind: str) -> int:
    """Attention processors of every network: "sdpa" (fused, no attention matrix kept) or "eager"."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    n = 0
    for net in networks:
        if hasattr(net, "set_attn_processor") and getattr(net, "attn_processors", None):
            net.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())
            n += 1
    return n


def compile_networks(networks: Iterable[torch.nn.Module], backend: Optional[str] = None) -> int:
    """``torch.compile`` each network in place (``Module.compile``), so every reference to it keeps working."""
    n = 0
    for net in networks:
        net.compile(**({"backend": backend} if backend else {}))
        n += 1
    return n


def apply_savers(roles, recipe, device, data=None) -> dict:
    """Apply the recipe's memory and speed options to the built roles; returns what was done (for logs)."""
    r = recipe
    done: dict = {}
    if r.train.gradient_checkpointing:
        done["gradient_checkpointing"] = len(enable_gradient_checkpointing(roles))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.train.mixed_precision)
    if half is not None and r.model.dtype != "float32":
        done["frozen_critic_parts"] = cast_frozen_critic_parts(roles, half)
    if r.train.attention != "default":
        done["attention"] = set_attention(all_networks(roles), r.train.attention)
    if r.model.teacher_offload:
        done["teacher_offload"] = BlockOffload(roles.backbone.teacher_unet, device)
    if r.data.cache_text_embeddings and data is not None:
        done["text_cache"] = TextEmbeddingCache(roles.backbone, r.data.resolution,
                                                all_prompts(data, list(r.sample.prompts)), device)
    if r.train.compile:
        done["compile"] = compile_networks([n for n in all_networks(roles) if "UNet" in type(n).__name__])
    return done
