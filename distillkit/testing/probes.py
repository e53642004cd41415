"""Which networks a loss's graph really passes through: the measuring half of the contract suite.

Asserting that a frozen network "got no gradient" proves nothing when its weights cannot receive one
(``requires_grad=False``). The probe therefore *makes frozen networks trainable for the duration of the
check* and asks autograd which of them the loss reaches, and for the teacher, whose weights a LoRA
student or fake score may share, it watches the calls instead: a teacher call (no adapter active) whose
input requires grad is a differentiable path through the teacher.

    probe = GradientProbe(engine, critics_trainable=True)
    with probe:
        total = ...                      # build the loss inside the block
    reached = probe.reached(total)       # {"teacher", "vae", "critic", ...}
"""

from __future__ import annotations

from typing import Iterable

import torch

from distillkit.models.adapters import current_adapter


def _tensor_args(args, kwargs) -> Iterable[torch.Tensor]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a


class GradientProbe:
    """Watches one engine's networks during a block (see the module docstring).

    Labels: ``"teacher"`` (a call of the teacher's UNet with no adapter active on a differentiable input),
    each other frozen module of the backbone by its name (``"vae"``, ``"text_encoder"``...), ``"student"``,
    and each critic role of ``roles`` (role -> critic module) by role name, its frozen parts as
    ``"<role> (frozen parts)"``.
    """

    def __init__(self, engine, roles: dict | None = None, *, student_trainable: bool = False,
                 critics_trainable: bool = False):
        self.teacher_unet = engine.teacher.unet.module
        shared = {id(self.teacher_unet), id(engine.backbone.base_unet)}
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        frozen: list[torch.nn.Parameter] = []  # made trainable for the block, whatever the phase
        for name, module in engine.backbone.frozen_modules().items():
            if id(module) in shared:
                continue  # shared with adapter roles: watched by its calls, not by its weights
            self.params[name] = [p for p in module.parameters() if not p.requires_grad]
            frozen += self.params[name]
        self.params["student"] = engine.student.trainable_parameters()
        self._make_trainable = frozen + (list(self.params["student"]) if student_trainable else [])
        for role, critic in (roles or {}).items():
            own = critic.trainable_parameters()
            ids = {id(p) for p in own}
            self.params[role] = own
            parts = [p for p in critic.parameters() if id(p) not in ids and not p.requires_grad]
            self.params[f"{role} (frozen parts)"] = parts
            self._make_trainable += parts + (own if critics_trainable else [])
        self.teacher_on_graph = False
        self._hook = None
        self._flags: list[tuple[torch.nn.Parameter, bool]] = []

    def __enter__(self) -> "GradientProbe":
        self._flags = [(p, p.requires_grad) for p in self._make_trainable]
        for p, _ in self._flags:
            p.requires_grad_(True)
        self._hook = self.teacher_unet.register_forward_pre_hook(self._watch_teacher, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        for p, flag in self._flags:
            p.requires_grad_(flag)
        if self._hook is not None:
            self._hook.remove()

    def _watch_teacher(self, module, args, kwargs):
        if torch.is_grad_enabled() and current_adapter(module) is None and \
                any(t.requires_grad for t in _tensor_args(args, kwargs)):
            self.teacher_on_graph = True

    def reached(self, total: torch.Tensor) -> set[str]:
        """The labels whose weights ``total`` depends on (plus "teacher" if a teacher call was on the graph)."""
        found = {"teacher"} if self.teacher_on_graph else set()
        for label, params in self.params.items():
            params = [p for p in params if p.requires_grad]
            if not params or not total.requires_grad:
                continue
            grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
            if any(g is not None and bool(g.abs().sum() > 0) for g in grads):
                found.add(label)
        return found
