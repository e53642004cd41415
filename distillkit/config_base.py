"""Config bases shared by losses, critics and the recipe schema (a leaf module: it imports no other part of distillkit)."""

from __future__ import annotations

import pydantic


class EmptyConfig(pydantic.BaseModel):
    """The ``params`` schema of a loss or critic that takes none: any key is an error."""

    model_config = pydantic.ConfigDict(extra="forbid")


def ordered(low: str = "t_min", high: str = "t_max"):
    """A pydantic after-validator for a ``params`` schema: field ``low`` must not exceed field ``high``.

    Every loss that draws timesteps from an inclusive range ``U{t_min..t_max}`` needs this check, so it is
    one piece of code: ``_t_range = distillkit.ordered()`` in the class body (or ``ordered("fake_t_min",
    "fake_t_max")`` for another pair)."""

    def check(model):
        a, b = getattr(model, low), getattr(model, high)
        if a > b:
            raise ValueError(f"{low} ({a}) must not exceed {high} ({b})")
        return model

    return pydantic.model_validator(mode="after")(check)
