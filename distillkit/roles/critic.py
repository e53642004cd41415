"""Critics: trainable networks other than the student, each with its own optimiser.

A discriminator (ADD), a fake-score network (SiD, VSD, DMD2) or a GAN head is a ``Critic``. The engine
builds it from the recipe's ``[[critics]]`` entry, gives it an optimiser over
:meth:`Critic.trainable_parameters`, trains it in the critic phase with the summed ``critic_loss`` of
every loss bound to it, and freezes exactly those parameters during the generator phase. Frozen
sub-networks (a DINOv2 feature extractor) are simply created with ``requires_grad=False`` and are then
neither optimised nor checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import torch

from distillkit.losses.base import EmptyConfig

if TYPE_CHECKING:  # pragma: no cover
    from distillkit.models.backbone import Backbone
    from distillkit.roles.student import Student
    from distillkit.roles.teacher import Teacher


@dataclass
class BuildEnv:
    """What a critic may use to build itself: the loaded backbone, teacher, student and run facts."""

    backbone: "Backbone"
    teacher: "Teacher"
    student: "Student"
    resolution: int
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)


class Critic(torch.nn.Module):
    """Base class. Subclasses set ``name`` (and ``Config``) and build their modules in ``__init__``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[pydantic.BaseModel]] = EmptyConfig

    def __init__(self, config: pydantic.BaseModel, env: BuildEnv):
        super().__init__()
        self.config = config

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

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters and all buffers: what a checkpoint must hold to restore this critic."""
        trainable = {id(p) for p in self.trainable_parameters()}
        state = {n: p for n, p in self.named_parameters() if id(p) in trainable}
        state.update(dict(self.named_buffers()))
        return {k: v.detach() for k, v in state.items()}
