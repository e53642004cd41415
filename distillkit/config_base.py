"""Config bases shared by losses, critics and the recipe schema (a leaf module: it imports no other part of distillkit)."""

from __future__ import annotations

import pydantic


class EmptyConfig(pydantic.BaseModel):
    """The ``params`` schema of a loss or critic that takes none: any key is an error."""

    model_config = pydantic.ConfigDict(extra="forbid")
