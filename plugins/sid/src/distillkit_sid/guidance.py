"""The guidance strategies of the SiD family, each one recipe key: LSG scales, Zero-CFG, Anti-CFG.

Four CFG scales (diffusers convention: 1 = the prompt alone, 0 = the empty prompt alone, negative
allowed) enter SiD-LSG (Zhou et al., arXiv 2406.01561):

* κ1 — the fake score's own scale while it is trained (``fake_train_scale``);
* κ2 = κ3 — the fake score's scale inside the generator loss (``fake_scale``; the paper names two
  scales, the authors' code ties them, and so does distillkit);
* κ4 — the teacher's scale inside the generator loss (``teacher_scale``).

Strategies (``guidance``):

* ``"lsg"`` — any κ; each unset one defaults to the recipe's ``[teacher] guidance_scale``, so one key sets
  all four equal, as every model SiD-LSG released was trained;
* ``"zero_cfg"`` — few-step SiD's Zero-CFG (arXiv 2505.12674): the teacher without CFG, the fake score
  without text: (κ1, κ2 = κ3, κ4) = (0, 0, 1). It fixes all three, so setting any of them is an error;
* ``"anti_cfg"`` — few-step SiD's Anti-CFG: negative CFG in the fake score. Its scale ``fake_scale`` must
  be given (< 0); the teacher and the fake score's training default to no CFG (κ4 = κ1 = 1), a choice:
  the paper's exact values were not readable, so both stay explicit keys.

A fake score used with any scale other than 1 needs an unconditional branch, which it learns from
prompt dropout (10% of its training prompts replaced by the empty prompt, SiD-LSG's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from distillkit_sid.functional import needs_unconditional_branch

Strategy = Literal["lsg", "zero_cfg", "anti_cfg"]
#: SiD-LSG's prompt dropout when the fake score needs an unconditional branch
DEFAULT_DROPOUT = 0.1
ZERO_CFG = {"fake_train_scale": 0.0, "fake_scale": 0.0, "teacher_scale": 1.0}


@dataclass(frozen=True)
class Scales:
    """The resolved scales of one run and the fake score's prompt-dropout probability."""

    fake_train: float  # κ1
    fake: float  # κ2 = κ3
    teacher: float  # κ4
    dropout: float


def check(strategy: Strategy, fake_train_scale: Optional[float], fake_scale: Optional[float],
          teacher_scale: Optional[float]) -> None:
    """Raise ValueError (reported by the recipe loader with the field's path) for scales the strategy forbids."""
    given = {"fake_train_scale": fake_train_scale, "fake_scale": fake_scale, "teacher_scale": teacher_scale}
    if strategy == "zero_cfg":
        bad = [k for k, v in given.items() if v is not None]
        if bad:
            raise ValueError(f"guidance = 'zero_cfg' fixes (fake_train_scale, fake_scale, teacher_scale) = (0, 0, 1); "
                             f"remove {', '.join(bad)} or use guidance = 'lsg' to choose scales yourself")
    if strategy == "anti_cfg":
        if fake_scale is None:
            raise ValueError("guidance = 'anti_cfg' needs its negative fake-score scale: set fake_scale, e.g. -1.0")
        if fake_scale >= 0:
            raise ValueError(f"guidance = 'anti_cfg' applies negative CFG in the fake score: fake_scale must be < 0 "
                             f"(got {fake_scale}); for a positive scale use guidance = 'lsg'")


def resolve(strategy: Strategy, recipe_teacher_scale: float, fake_train_scale: Optional[float] = None,
            fake_scale: Optional[float] = None, teacher_scale: Optional[float] = None,
            prompt_dropout: Optional[float] = None) -> Scales:
    """The scales a strategy uses, given the recipe's ``[teacher] guidance_scale`` for defaults."""
    check(strategy, fake_train_scale, fake_scale, teacher_scale)
    if strategy == "zero_cfg":
        k1, k2, k4 = ZERO_CFG["fake_train_scale"], ZERO_CFG["fake_scale"], ZERO_CFG["teacher_scale"]
    elif strategy == "anti_cfg":
        k1 = 1.0 if fake_train_scale is None else fake_train_scale
        k2 = fake_scale
        k4 = 1.0 if teacher_scale is None else teacher_scale
    else:
        default = float(recipe_teacher_scale)
        k1 = default if fake_train_scale is None else fake_train_scale
        k2 = default if fake_scale is None else fake_scale
        k4 = default if teacher_scale is None else teacher_scale
    if prompt_dropout is None:
        # a fake score used only unconditionally (both scales 0, Zero-CFG) never sees a prompt: nothing to drop
        uses_prompt = k1 != 0.0 or k2 != 0.0
        prompt_dropout = DEFAULT_DROPOUT if needs_unconditional_branch(k1, k2) and uses_prompt else 0.0
    return Scales(float(k1), float(k2), float(k4), float(prompt_dropout))
