"""Sharded training of the full-copy networks (ZeRO-2/3 semantics through torch FSDP2).

``train.sharding = "zero3"`` (or an accelerate FSDP config, or a DeepSpeed config with ZeRO stage 3)
shards every trained network that is a full copy of a UNet — a fully fine-tuned student, a full fake
score — over the processes, one FSDP unit per UNet block (each down block, the mid block, each up block)
and one for the rest: parameters, gradients and Adam states then take 1/N of the memory each, and a
block's weights are all-gathered only while it runs. ``"zero2"`` keeps a block's gathered weights from its
forward to its backward (less traffic, more memory), as ZeRO stage 2 does with its replicated weights.
LoRA adapters and small critic heads stay replicated (their gradients go through the bucketed all-reduce);
frozen networks are never sharded or wrapped.

Sharding happens at the end of set-up, after a checkpoint was restored into the whole networks, so
checkpoints are always *consolidated* (the same files as an unsharded run: resumable under any number of
processes, with or without sharding). Saving gathers the shards on every process
(:func:`consolidated`); the export gathers the student into a plain copy (:func:`plain_student`).

Why not accelerate's FSDP/DeepSpeed ``prepare``: it wraps one model with one optimiser, whereas a
distillation step trains several roles with their own optimisers in alternating phases, on networks
some of which are adapters on a shared frozen base. The accelerate config files are read for their
settings only.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from distillkit.engine.distributed import is_sharded
from distillkit.errors import RecipeError


def requested_mode(recipe, accelerator) -> str:
    """"none", "zero2" or "zero3": the recipe's ``train.sharding``, else what the accelerate config asks."""
    mode = recipe.train.sharding
    if mode != "none":
        return mode
    kind = str(getattr(accelerator, "distributed_type", "")).rsplit(".", 1)[-1]
    if kind == "FSDP":
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        return "zero3" if getattr(plugin, "reshard_after_forward", True) not in (False, "SHARD_GRAD_OP") else "zero2"
    if kind == "DEEPSPEED":
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        return "zero3" if getattr(plugin, "zero_stage", 3) == 3 else "zero2"
    return "none"


def unet_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The wrapping policy: each down block, the mid block, each up block of a diffusers UNet."""
    blocks = list(getattr(unet, "down_blocks", [])) + list(getattr(unet, "up_blocks", []))
    mid = getattr(unet, "mid_block", None)
    return blocks + ([mid] if mid is not None else [])


def full_copies(roles, trained) -> list[torch.nn.Module]:
    """Networks wholly owned by this trained role (every parameter its own): what sharding applies to."""
    from distillkit.engine.memory import diffusers_models

    own = {id(p) for p in trained.parameters}
    if trained.kind == "student":
        candidates = [] if roles.student.is_lora else [roles.student.unet.module]
    else:
        candidates = diffusers_models(roles.critics[trained.name])
    return [m for m in candidates if hasattr(m, "down_blocks") and all(id(p) in own for p in m.parameters())]


def _distributed_like(value: torch.Tensor, param) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.to_local().device), param.device_mesh, param.placements)


def shard_roles(roles, trained: dict, ema, accelerator, mode: str, prepare) -> list[str]:
    """Shard the full-copy networks of every trained role (``mode`` "zero2"/"zero3"), rebuild their
    optimisers and LR schedules over the sharded parameters with the state they had, and point the EMA at
    the new parameters. ``prepare`` wraps a new optimiser as the engine does. Returns the sharded roles."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if mode == "none" or accelerator.num_processes == 1:
        return []
    if ema is not None and type(ema).__name__ == "OffloadedEMA":
        raise RecipeError(["student.ema.offload: not available with train.sharding (the EMA is sharded like the "
                           "student instead); set one of them off"])
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    reshard = mode == "zero3"
    done = []
    for name, t in trained.items():
        nets = full_copies(roles, t)
        if not nets:
            continue
        for net in nets:
            for block in unet_blocks(net):
                fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
            fully_shard(net, mesh=mesh, reshard_after_forward=reshard)
        if t.kind == "student":
            roles.student._owned = roles.student.unet.owned_parameters()  # fully_shard made new Parameters
            named = roles.student.named_parameters()
        else:
            roles.critics[name]._owned = None
            named = roles.critics[name].named_trainable()
        _rebind_optimizer(t, named, prepare)
        if t.kind == "student" and ema is not None:
            ema.params = named
            ema.shadow = {n: _distributed_like(ema.shadow[n], p) if is_sharded(p) else ema.shadow[n]
                          for n, p in named.items()}
        t.sharded = True
        done.append(name)
    return done


def _rebind_optimizer(t, named: dict, prepare) -> None:
    """A new optimiser of the same class and settings over ``named`` (same order as before), holding the
    old one's state with each moment sharded like its parameter; a new LR schedule at the same point."""
    old = getattr(t.optimizer, "optimizer", t.optimizer)
    state = old.state_dict()
    params = list(named.values())
    for i, p in enumerate(params):
        for key, value in state["state"].get(i, {}).items():
            if is_sharded(p) and torch.is_tensor(value) and value.shape == p.shape:
                state["state"][i][key] = _distributed_like(value, p)
    new = type(old)(params, **old.defaults)
    new.load_state_dict(state)
    sched_state = t.scheduler.state_dict()
    scheduler = torch.optim.lr_scheduler.LambdaLR(new, t.scheduler.lr_lambdas[0])  # its init sets lr(0)...
    scheduler.load_state_dict(sched_state)
    for group, lr in zip(new.param_groups, scheduler.get_last_lr()):  # ...so put back the lr of the step reached
        group["lr"] = lr
    t.params, t.optimizer, t.scheduler = named, prepare(new), scheduler


# -- gathering for checkpoints and the export ---------------------------------------------------------
def _full(value):
    if is_sharded(value):
        return value.full_tensor()
    if isinstance(value, dict):
        return {k: _full(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_full(v) for v in value]
    return value


def consolidated(trained: dict, critics: dict, ema):
    """What ``write_state`` needs, with every shard gathered (a collective: call on every process).
    Without sharding the live objects themselves are returned, at no cost."""
    if not any(t.sharded for t in trained.values()):
        return trained, critics, ema
    views, critic_views = {}, {}
    for name, t in trained.items():
        weights = _full(critics[name].trainable_state_dict() if t.kind == "critic" else t.state_dict())
        opt_state = _full(t.optimizer.state_dict())
        views[name] = SimpleNamespace(kind=t.kind, name=name, state_dict=lambda w=weights: w,
                                      optimizer=SimpleNamespace(state_dict=lambda s=opt_state: s),
                                      scheduler=t.scheduler)
        if t.kind == "critic":
            critic_views[name] = SimpleNamespace(trainable_state_dict=lambda w=weights: w)
    ema_view = None if ema is None else SimpleNamespace(state_dict=lambda s=_full(dict(ema.shadow)): s)
    return views, critic_views, ema_view


def plain_student(student, backbone):
    """The student with full weights in an unsharded copy (a collective: call on every process); the
    student itself when it is not sharded. What sample grids and the export use."""
    from distillkit.roles.student import Student

    unet = student.unet.module
    if student.is_lora or not any(is_sharded(p) for p in unet.parameters()):
        return student
    full = {n: _full(p.detach()) for n, p in unet.named_parameters()}
    plain = type(unet).from_config(unet.config).to(next(iter(full.values())).device)
    plain.load_state_dict(full)
    return Student(backbone, plain, student.timesteps, zero_terminal_snr=student.zero_terminal_snr,
                   first_input=student.first_input, renoise=student.renoise)


def check(recipe, mode: str) -> Optional[str]:
    """A recipe problem with sharding, or None."""
    if mode != "none" and recipe.run.sample_every:
        return ("run.sample_every: periodic sample grids are not drawn under sharding (the student's weights "
                "are spread over the processes); set run.sample_every = 0 and sample a checkpoint with "
                "`distillkit sample`")
    return None
