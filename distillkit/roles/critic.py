"""Critics: trainable networks other than the student, each with its own optimiser.

A discriminator (ADD), a fake-score network (SiD, VSD, DMD2) or a GAN head is a ``Critic``. The engine
builds it from the recipe's ``[[critics]]`` entry, gives it an optimiser over
:meth:`Critic.trainable_parameters`, trains it in the critic phase with the summed ``critic_loss`` of
every loss bound to it, and freezes exactly those parameters during the generator phase. Frozen
sub-networks (a DINOv2 feature extractor) are simply created with ``requires_grad=False`` and are then
neither optimised nor checkpointed.

A critic may also own weights that live outside its own module tree: a LoRA adapter on the teacher's
frozen UNet (:meth:`BuildEnv.unet`). They are its parameters in every sense (optimised, checkpointed,
counted by the contract suite) without a second copy of the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import torch

from distillkit.config_base import EmptyConfig
from distillkit.models.adapters import UNetRef, add_lora

if TYPE_CHECKING:  # pragma: no cover
    from distillkit.models.backbone import Backbone
    from distillkit.roles.student import Student
    from distillkit.roles.teacher import Teacher


@dataclass
class BuildEnv:
    """What a critic may use to build itself: the loaded backbone, teacher, student and run facts.

    ``role`` is the critic's instance id (the adapter name of a LoRA on the shared base); ``seed`` seeds
    its random initialisation (the engine derives it from the run seed and the id).
    """

    backbone: "Backbone"
    teacher: "Teacher"
    student: "Student"
    resolution: int
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)
    role: str = "critic"
    seed: int | None = None

    def unet(self, lora: dict | None = None, dtype: torch.dtype = torch.float32) -> UNetRef:
        """The teacher's network for a critic to train: a LoRA adapter named after this critic on the
        shared frozen base when ``lora`` is given (``{"rank", "alpha", "target_modules"}``; no copy), else
        a full trainable copy of the teacher's weights in ``dtype``."""
        from distillkit.utils import seeded

        if lora:
            base = self.backbone.base_unet
            add_lora(base, self.role, rank=lora["rank"], alpha=lora.get("alpha"),
                     target_modules=lora.get("target_modules", ("to_k", "to_q", "to_v", "to_out.0")), seed=self.seed)
            return UNetRef(base, self.role)
        with seeded(self.seed):
            copy = self.backbone.load_unet(dtype)
        return UNetRef(copy.to(self.device).requires_grad_(True).train())


class Critic(torch.nn.Module):
    """Base class. Subclasses set ``name`` (and ``Config``) and build their modules in ``__init__``.

    Trainable parameters are those of the module tree with ``requires_grad`` at build time, plus any
    adapter the critic adopted with :meth:`adopt` (a LoRA on the shared base lives in the teacher's UNet,
    not in this module). Keep a full network of your own as a submodule (``self.net = ref.module``) or
    adopt the ref; either way :meth:`trainable_state_dict` names its weights.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[pydantic.BaseModel]] = EmptyConfig

    def __init__(self, config: pydantic.BaseModel, env: BuildEnv):
        super().__init__()
        self.config = config
        self._adopted: dict[str, UNetRef] = {}
        self._owned: dict[str, torch.nn.Parameter] | None = None

    @classmethod
    def build(cls, config: pydantic.BaseModel, env: BuildEnv) -> "Critic":
        return cls(config, env)

    @classmethod
    def check_assets(cls, config: pydantic.BaseModel) -> list[str]:
        """Problems with files this critic needs (missing weights...), found without loading anything.

        ``distillkit validate`` prints them as warnings; ``distillkit run`` stops on them before any model
        loads. Each message should name the file and where it is expected.
        """
        return []

    @classmethod
    def recipe_problems(cls, config: pydantic.BaseModel, recipe) -> list[tuple[str, str]]:
        """What this critic's params cannot work with in the rest of the recipe (the student, the data),
        found without loading anything: ``(field under this entry's params, message)`` pairs.

        Reported with the recipe's other problems, by ``distillkit validate`` and before ``run`` loads a
        model; a message should say what to change.
        """
        return []

    def adopt(self, key: str, ref: UNetRef) -> UNetRef:
        """Make an adapter on a shared UNet part of this critic (its weights are checkpointed as
        ``<key>.<name>``). A ref to a module of the critic's own should be a submodule instead."""
        if not ref.shares_base:
            raise ValueError("adopt() is for adapters on a shared UNet; assign a full copy as a submodule")
        self._adopted[key] = ref
        self._owned = None
        return ref

    def _all_named(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.named_parameters())
        for key, ref in self._adopted.items():
            named.update({f"{key}.{n}": p for n, p in ref.owned_parameters().items()})
        return named

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the critic's optimiser updates. By default the module tree's parameters that require grad
        at the first call, plus adopted adapters; fixed from then on (the engine's phases toggle
        ``requires_grad`` later, which must not change what the critic owns). Override to narrow it."""
        if self._owned is None:
            owned = {n: p for n, p in self.named_parameters() if p.requires_grad}
            for key, ref in self._adopted.items():
                owned.update({f"{key}.{n}": p for n, p in ref.owned_parameters().items()})
            self._owned = owned
        return list(self._owned.values())

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """:meth:`trainable_parameters` by name (as in :meth:`trainable_state_dict`)."""
        ids = {id(p) for p in self.trainable_parameters()}
        return {n: p for n, p in self._all_named().items() if id(p) in ids}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters and all buffers: what a checkpoint must hold to restore this critic.

        The values share storage with the live tensors (``detach``), which is how
        :meth:`load_trainable_state_dict` writes a checkpoint back into them."""
        state: dict[str, torch.Tensor] = dict(self.named_trainable())
        state.update(dict(self.named_buffers()))
        return {k: v.detach() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` returned (names and shapes must match exactly)."""
        from distillkit.checkpoint import load_params

        load_params(self.trainable_state_dict(), state, f"critic {self.name!r}", exact=True)
