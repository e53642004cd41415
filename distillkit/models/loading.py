"""Loading model components from a hub id or a local diffusers folder, failing with messages a user can act on.

Every component goes through its class's own ``from_pretrained(source, subfolder=...)``, so a hub id
and a local folder take the same path. What this module adds is the failure handling: diffusers and
transformers report a missing folder as a long ``OSError`` about the hub, and transformers 5.x does
not fail at all for a tokenizer it cannot reach offline (it returns a 2-token tokenizer that maps
every word to id 2, and training would silently run on garbage conditioning). Here each of those
becomes a :class:`~distillkit.errors.ModelLoadError` that names the source and the expected layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from distillkit.errors import ModelLoadError

#: the smallest vocabulary a working tokenizer can have; the broken offline one has 2 entries
MIN_TOKENIZER_VOCAB = 1000

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float16"``/``"bfloat16"`` (as recipes spell them) or a ``torch.dtype`` → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


class LazyClass:
    """A class attribute naming a class that is imported on first access (``LazyClass("diffusers", "X")``).

    Backbone classes are registered by every command, ``validate`` and ``plugins`` included; importing
    diffusers or transformers at class definition would cost those commands seconds for nothing. Works
    on the class and on instances alike, so ``cls.pipeline_class.save_lora_weights(...)`` and
    ``self.pipeline_class(...)`` read as if it were the class itself.
    """

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __get__(self, instance, owner=None) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), self.name)

    def __repr__(self) -> str:
        return f"LazyClass({self.module!r}, {self.name!r})"


def expected_layout(folders: Sequence[str]) -> str:
    """How a loadable folder looks, for error messages."""
    return "a diffusers folder with model_index.json, " + ", ".join(f"{f}/" for f in folders)


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` means a folder on disk rather than a hub id.

    Anything that exists, or that cannot be a hub id (``/abs``, ``./rel``, ``a/b/c``), is a path; a
    missing ``owner/name`` is taken to be a hub id.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    source = str(source)
    if os.path.exists(source):
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False


def check_source(source: str | os.PathLike, folders: Sequence[str]) -> None:
    """Fail before any loading if a local ``source`` is missing or lacks one of the component ``folders``.

    Hub ids pass unchecked: whether they resolve is only known by trying.
    """
    source = str(source)
    if not is_local(source):
        return
    layout = expected_layout(folders)
    if not os.path.isdir(source):
        what = "is a file, not a folder" if os.path.exists(source) else "does not exist"
        raise ModelLoadError(f"model source {source!r} {what}; expected {layout}")
    missing = [f for f in folders if not os.path.isdir(os.path.join(source, f))]
    if missing:
        raise ModelLoadError(f"model folder {source!r} has no {', '.join(f + '/' for f in missing)}; "
                             f"expected {layout}")


def _load_failure(what: str, source: str, subfolder: str | None, err: Exception) -> ModelLoadError:
    where = f"{source}/{subfolder}" if subfolder else source
    if is_local(source):
        hint = "check that the folder was written by save_pretrained and is complete"
    else:
        hint = ("the hub may be unreachable (offline?); download the model elsewhere and pass the local "
                "diffusers folder instead")
    return ModelLoadError(f"could not load the {what} from {where!r}: {err}. Hint: {hint}")


def load_component(cls, source: str, subfolder: str, *, dtype: torch.dtype | None = None,
                   revision: str | None = None, variant: str | None = None) -> Any:
    """``cls.from_pretrained(source, subfolder=...)`` with loader failures turned into ``ModelLoadError``.

    ``dtype`` is always passed when given: transformers 5.x otherwise loads in the checkpoint's dtype.
    """
    kwargs: dict[str, Any] = {"subfolder": subfolder}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if revision is not None:
        kwargs["revision"] = revision
    if variant is not None:
        kwargs["variant"] = variant
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_failure(f"{subfolder} ({cls.__name__})", source, subfolder, err) from err


def check_tokenizer(tokenizer, source: str) -> None:
    """Reject the placeholder tokenizer transformers 5.x returns, without raising, for an unreachable hub id."""
    n = len(tokenizer)
    if n < MIN_TOKENIZER_VOCAB:
        # a mistyped relative path looks like a hub id ("models/sd15"), so say that it is not a folder either
        not_local = "" if os.path.exists(source) else " (no local folder of that name exists either)"
        raise ModelLoadError(
            f"the tokenizer at {source!r}{not_local} has only {n} tokens: the hub is unreachable (offline?) and "
            f"transformers returned a placeholder instead of failing. Pass a local diffusers folder instead (one "
            f"with tokenizer/ and model_index.json), or set HF_HUB_OFFLINE=0 with network access.")


def load_tokenizer(cls, source: str, subfolder: str = "tokenizer", *, revision: str | None = None):
    """Load a tokenizer and make sure it is a real one (see :func:`check_tokenizer`)."""
    tokenizer = load_component(cls, source, subfolder, revision=revision)
    check_tokenizer(tokenizer, f"{source}/{subfolder}" if is_local(source) else source)
    return tokenizer


def load_config(cls, source: str, subfolder: str, *, revision: str | None = None) -> dict[str, Any]:
    """A diffusers component's config dict, read without building the component."""
    try:
        return dict(cls.load_config(source, subfolder=subfolder, revision=revision))
    except (OSError, ValueError) as err:
        raise _load_failure(f"{subfolder} config", source, subfolder, err) from err


def load_scheduler(source: str, subfolder: str = "scheduler", *, revision: str | None = None):
    """The scheduler exactly as the source configured it (its own class), so a saved pipeline keeps it."""
    import diffusers

    config = load_config(diffusers.DDPMScheduler, source, subfolder, revision=revision)
    name = config.get("_class_name", "DDPMScheduler")
    scheduler_cls = getattr(diffusers, name, None)
    if scheduler_cls is None and name == "StudentScheduler":  # an exported student's (distillkit.schedulers)
        from distillkit.schedulers import StudentScheduler as scheduler_cls
    if scheduler_cls is None:
        raise ModelLoadError(f"the scheduler config at {source!r} names {name!r}, which diffusers "
                             f"{diffusers.__version__} does not have")
    return scheduler_cls.from_config(config)


def load_pipeline_config(source: str, *, revision: str | None = None) -> dict[str, Any]:
    """``model_index.json`` as a dict (pipeline-level options such as SDXL's empty-prompt convention).

    A local folder without one gives ``{}``: the file only carries options with pipeline defaults, and
    a folder assembled by hand from component folders is still loadable.
    """
    from diffusers import DiffusionPipeline

    if is_local(source) and not os.path.isfile(os.path.join(source, "model_index.json")):
        return {}
    try:
        return dict(DiffusionPipeline.load_config(source, revision=revision))
    except (OSError, ValueError) as err:
        raise _load_failure("pipeline config (model_index.json)", source, None, err) from err


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A small JSON file as a dict, with a ``ModelLoadError`` naming the file when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelLoadError(f"{str(path)!r} does not exist") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"could not read {str(path)!r}: {err}") from err
