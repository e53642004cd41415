"""The loss contract: what a method plugin implements, and the per-step bundle it receives.

A loss contributes to one or both phases of a training step:

* the **generator phase** (``generator_loss``) back-propagates into the student only. Critics and the
  teacher are frozen (``requires_grad=False``) but *not* detached: gradients still flow through their
  inputs when a method needs that (ADD's discriminator, SiD's fake score).
* the **critic phase** (``critic_loss``) trains the critic the loss is bound to, on detached student
  samples. Several losses may train one critic (a fake-score loss plus a GAN head); their terms are
  summed into that critic's single optimiser step.

Each returns a :class:`LossOutput`: the scalar to minimise and named float terms, logged as
``loss/<plugin>.<name>/<term>``. Losses are plain objects (no parameters of their own); anything
trainable belongs in a :class:`~distillkit.roles.critic.Critic`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import pydantic
import torch

from distillkit.config_base import EmptyConfig

if TYPE_CHECKING:  # pragma: no cover
    from distillkit.models.backbone import Backbone
    from distillkit.models.conditioning import Conditioning
    from distillkit.roles.critic import Critic
    from distillkit.roles.student import Student
    from distillkit.roles.teacher import Teacher


class Phase(str, enum.Enum):
    GENERATOR = "generator"
    CRITIC = "critic"


@dataclass
class LossOutput:
    """A scalar to minimise plus named terms to log (detached floats or 0-d tensors)."""

    total: torch.Tensor
    terms: dict[str, Any] = field(default_factory=dict)


class StepContext:
    """Everything a loss may read in one phase of one step.

    The student's sample (``student_x0``, ``student_t``, ``student_input``) carries the student graph in
    the generator phase and is detached in the critic phase. The engine passes it lazily: a loss that
    never reads it (a denoising loss that runs the student itself) costs no student pass. Critics are in
    ``critics`` by role (``ctx.critic`` when the loss has one); ``updating`` names the roles whose
    critics train in this critic update. Random draws go through :meth:`randn_like` /
    :meth:`sample_timesteps`, which use a generator seeded from (run seed, step, rank, phase, purpose):
    a resumed run draws exactly what an uninterrupted run would have.
    """

    def __init__(self, *, phase: Phase, step: int, backbone: "Backbone", teacher: "Teacher", student: "Student",
                 prompts: list[str], cond: "Conditioning", uncond: "Conditioning", resolution: int,
                 student_x0: Optional[torch.Tensor] = None, student_t: Optional[torch.Tensor] = None,
                 student_input: Optional[torch.Tensor] = None, sample: Optional[Callable[[], Any]] = None,
                 real_x0: Optional[torch.Tensor] = None, real_pixels: Optional[torch.Tensor] = None,
                 critic: Optional["Critic"] = None, critics: Optional[Mapping[str, "Critic"]] = None,
                 updating: frozenset[str] = frozenset(), generator: Optional[torch.Generator] = None,
                 memo: Optional[dict] = None, batch_memo: Optional[dict] = None):
        self.phase, self.step, self.backbone, self.teacher, self.student = phase, step, backbone, teacher, student
        self.prompts, self.cond, self.uncond, self.resolution = prompts, cond, uncond, resolution
        if sample is None and student_x0 is None:
            raise TypeError("StepContext needs the student's sample: student_x0/student_t/student_input or sample=")
        self._sample_fn = sample
        self._sample = None if sample is not None else (student_x0, student_t, student_input)
        self.real_x0, self.real_pixels = real_x0, real_pixels  # real data (latents) and the same images in [-1, 1]
        if critic is not None and critics:
            raise TypeError("give critic= (one critic) or critics= (by role), not both")
        self.critics: dict[str, "Critic"] = dict(critics) if critics else ({"critic": critic} if critic else {})
        self.updating = frozenset(updating)
        self.generator = generator
        self.memo = {} if memo is None else memo  # this phase's losses share it
        self.batch_memo = {} if batch_memo is None else batch_memo  # both phases of this step share it

    # -- the student's sample (made on first use) -----------------------------------------------
    def _student(self) -> tuple:
        if self._sample is None:
            s = self._sample_fn()
            self._sample = (s.x0, s.t, s.input)
        return self._sample

    @property
    def student_x0(self) -> torch.Tensor:
        return self._student()[0]

    @property
    def student_t(self) -> torch.Tensor:
        """(B,) timestep each sample was generated at."""
        return self._student()[1]

    @property
    def student_input(self) -> torch.Tensor:
        """The noisy input the student saw."""
        return self._student()[2]

    @property
    def critic(self) -> Optional["Critic"]:
        """The loss's critic when it has exactly one role (``critic = ...``); ``critics[role]`` otherwise."""
        if len(self.critics) > 1:
            raise AttributeError(f"this loss has several critics ({sorted(self.critics)}): use ctx.critics[role]")
        return next(iter(self.critics.values()), None)

    # -- seeded randomness --------------------------------------------------------------------
    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x.device, x.dtype)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def sample_timesteps(self, n: int, low: int = 0, high: int | None = None) -> torch.Tensor:
        return self.backbone.schedule.sample_timesteps(n, low, high, generator=self.generator)

    # -- shared work, computed once per phase ---------------------------------------------------
    def cached(self, key, fn, across_phases: bool = False):
        """Memoise ``fn()`` under ``key`` for this phase (e.g. decoded pixels shared by two losses).

        ``across_phases=True`` shares the value with the other phase of the same step: only for values
        that depend on the batch alone (frozen encoders of the prompts or the real images), never on the
        student, whose output keeps a graph in one phase and is updated between phases."""
        memo = self.batch_memo if across_phases else self.memo
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    def student_pixels(self) -> torch.Tensor:
        """The student's x0 decoded to pixels in [-1, 1] (differentiable in the generator phase)."""
        return self.cached("student_pixels", lambda: self.backbone.decode(self.student_x0))

    def real_pixels_or_decode(self) -> Optional[torch.Tensor]:
        if self.real_pixels is not None:
            return self.real_pixels
        if self.real_x0 is None:
            return None
        return self.cached("real_pixels", lambda: self.backbone.decode(self.real_x0))

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def device(self) -> torch.device:
        return self.cond.embeds.device


class Loss:
    """Base class for a distillation objective. Subclass, set ``name``, implement one or both phases.

    Class attributes:
        name: short name, unique within the plugin (recipe name is ``<plugin>.<name>``).
        Config: pydantic model of the loss's ``params`` table (``extra="forbid"`` recommended).
        critic: qualified type of the one critic this loss uses (``"add.discriminator"``), or None.
            Shorthand for ``critics = {"critic": ...}``; in the loss, ``ctx.critic`` is that critic.
        critics: role name -> qualified critic type, for a loss that uses several critics (DMD2's GAN term
            reads the ``fake_score`` network's features and trains a ``gan_head``); ``ctx.critics[role]``.
        needs_real_data: True if the loss reads ``ctx.real_x0`` (the recipe must then provide images).
        differentiates_through: frozen networks the *generator* loss back-propagates through the inputs of,
            by name: ``"teacher"``, ``"vae"`` or a critic role. The contract suite checks the claim both
            ways: a network called with a differentiable input that is not listed is a missing
            stop-gradient; a listed one never called so is a ``no_grad`` shortcut (SiD needs the path).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[pydantic.BaseModel]] = EmptyConfig
    critic: ClassVar[Optional[str]] = None
    critics: ClassVar[Mapping[str, str]] = {}
    needs_real_data: ClassVar[bool] = False
    differentiates_through: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: pydantic.BaseModel | None = None):
        self.config = config if config is not None else self.Config()

    def generator_loss(self, ctx: StepContext) -> Optional[LossOutput]:
        """Loss for the student (generator phase). Return None if this loss has no generator term."""
        return None

    def critic_loss(self, ctx: StepContext) -> Optional[LossOutput]:
        """Loss for the bound critics (critic phase). Return None if this loss has no critic term."""
        return None

    def gradient_paths(self) -> frozenset[str]:
        """The frozen networks this configured loss differentiates through (see ``differentiates_through``).

        Override when it depends on ``params`` (a pixel-space loss back-propagates through the VAE)."""
        return frozenset(self.differentiates_through)

    @classmethod
    def critic_roles(cls) -> dict[str, str]:
        """Role name -> qualified critic type, merging the ``critic`` shorthand into ``critics``."""
        if cls.critic and cls.critics:
            raise TypeError(f"{cls.__qualname__} sets both `critic` and `critics`; use `critics` alone")
        return {"critic": cls.critic} if cls.critic else dict(cls.critics)

    @classmethod
    def has_generator_term(cls) -> bool:
        return cls.generator_loss is not Loss.generator_loss

    @classmethod
    def has_critic_term(cls) -> bool:
        return cls.critic_loss is not Loss.critic_loss
