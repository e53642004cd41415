"""Pydantic validation errors turned into problems a user can act on: the field path in the recipe's own
words, the bad value, and the fix (an example line, the allowed values, a did-you-mean).

Used for the core schema (stage 1) and for every plugin's ``params`` Config (stage 2, with a path prefix
such as ``losses[0].params``), so a misspelt key reads the same wherever it is.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import pydantic

from distillkit.recipe.problems import Problem, RecipeProblems, did_you_mean, got

__all__ = ["format_validation_error"]

#: keys people bring from other tools, mapped to this schema's name (used only if that name is allowed)
_ALIASES = {
    "learning_rate": "lr", "lr_warmup_steps": "warmup_steps", "max_grad_norm": "grad_clip",
    "num_steps": "max_steps", "train_steps": "max_steps", "steps": "max_steps", "max_train_steps": "max_steps",
    "cfg": "guidance_scale", "cfg_scale": "guidance_scale", "guidance": "guidance_scale",
    "batch": "batch_size", "train_batch_size": "batch_size", "precision": "mixed_precision",
    "model": "pretrained", "model_id": "pretrained", "pretrained_model_name_or_path": "pretrained",
    "path": "pretrained",
    "type": "name", "loss": "name", "critic_id": "critic", "image_size": "resolution", "size": "resolution",
}

_COMPARISONS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


# -- where an error is, in the recipe's words -----------------------------------------------------
def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _union_members(tp: Any) -> tuple:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return ()


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    members = _union_members(tp)
    return members[0] if len(members) == 1 else tp


def _union_member(members: tuple, tag: str) -> Any:
    """The union member pydantic names ``tag`` in an error location (``float``, ``list[str]``,
    ``function-after[_order(), WeightSchedule]``, ``literal['auto','never']``)."""
    for m in members:
        if tag in (str(m), getattr(m, "__name__", None)):
            return m
    for m in members:
        if typing.get_origin(m) is Literal and tag.startswith("literal["):
            return m
        name = getattr(m, "__name__", None)
        if _is_model(m) and name and re.search(rf"\b{re.escape(name)}\b", tag):
            return m
    return Any


@dataclass
class _Where:
    path: str  # in the recipe's words: losses[1].params.guidance_scale
    annotation: Any  # the schema type at that path (Any if unknown)
    section: Any  # the model class holding the last key (for unknown keys), else None
    union_at: Optional[int]  # index in loc of the first union tag, if the error went through a union


def _locate(root: type[pydantic.BaseModel], loc: tuple, prefix: str) -> _Where:
    path, tp, section, union_at = prefix, root, None, None
    for pos, key in enumerate(loc):
        tp = _strip_optional(tp)
        section = None
        members = _union_members(tp)
        if isinstance(key, int):
            path += f"[{key}]"
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin is tuple and args and args[-1] is not Ellipsis:
                tp = args[key] if key < len(args) else Any
            elif origin in (list, tuple, set, frozenset) and args:
                tp = args[0]
            else:
                tp = Any
            continue
        if members:  # a union tag, not a key: narrow to the branch, add nothing to the path
            union_at = pos if union_at is None else union_at
            tp = _union_member(members, key)
            continue
        path = f"{path}.{key}" if path else str(key)
        if _is_model(tp):
            section = tp
            tp = tp.model_fields[key].annotation if key in tp.model_fields else Any
        elif typing.get_origin(tp) in (dict, Mapping) and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        else:
            tp = Any
    return _Where(path, _strip_optional(tp), section, union_at)


# -- what to say ------------------------------------------------------------------------------------
def _expected_noun(err: dict, tp: Any) -> str:
    """What a union branch wanted, as a noun phrase (for 'must be a number or a table with keys ...')."""
    kind = err["type"]
    if _is_model(tp):
        return f"a table with keys {', '.join(tp.model_fields)}"
    if kind.startswith(("float_", "finite_")):
        return "a number"
    if kind.startswith("int_"):
        return "an integer"
    if kind.startswith("string_"):
        return "a string"
    if kind.startswith("bool_"):
        return "true or false"
    if kind in ("list_type", "tuple_type"):
        return "a list"
    if kind == "literal_error":
        allowed = typing.get_args(tp)
        return ("one of " + ", ".join(repr(a) for a in allowed)) if allowed else err["msg"]
    return err["msg"].replace("Input should be ", "")


def _unknown_key(key: str, section: Any, where: str) -> str:
    allowed = list(section.model_fields) if _is_model(section) else []
    candidates = {a: a for a in allowed}
    candidates.update({alias: real for alias, real in _ALIASES.items() if real in allowed and alias not in allowed})
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {candidates[close[0]]!r}?"
    if allowed:
        return f"; allowed keys in {where}: {', '.join(allowed)}"
    return ""


def _toml_literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, list)) else str(value)


def _example(key: str, info: Any) -> str:
    """An example line for a missing required key: ``pretrained = "runs/fixtures/sd15"``, or for a missing
    table, its header and required keys."""
    if info is None:
        return ""
    tp = _strip_optional(info.annotation)
    table = f"[{key}]"
    if typing.get_origin(tp) is list and typing.get_args(tp):
        tp, table = typing.get_args(tp)[0], f"[[{key}]]"
    example = info.examples[0] if info.examples else None
    if example is None and _is_model(tp):  # a table: its required keys' own examples
        example = {name: f.examples[0] for name, f in tp.model_fields.items() if f.is_required() and f.examples}
    if isinstance(example, Mapping):
        lines = [f"{k} = {_toml_literal(v)}" for k, v in example.items()]
        return f", e.g. {table} with {', '.join(lines)}" if lines else ""
    return "" if example is None else f", e.g. {key} = {_toml_literal(example)}"


def _describe(err: dict, where: _Where) -> Problem:
    """One problem: ``<path>: <message> (got <value>); <fix>``."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    msg = err["msg"]
    seen, fix = got(value), ""
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        parent = where.path[: -len(key) - 1]
        msg = f"unknown key {key!r}"
        fix = _unknown_key(key, where.section, f"[{parent}]" if parent else "the top level")
    elif kind == "missing":
        seen, msg = "", "missing required key"
        info = where.section.model_fields.get(err["loc"][-1]) if _is_model(where.section) else None
        msg += _example(str(err["loc"][-1]), info)
        if info is not None and info.description:
            fix = f" ({info.description})"
    elif kind == "literal_error":
        allowed = typing.get_args(where.annotation)
        if allowed:
            msg = "must be one of " + ", ".join(repr(a) for a in allowed)
            fix = did_you_mean(str(value), [str(a) for a in allowed], cutoff=0.5)
        else:
            msg = msg.replace("Input should be", "must be one of")
    elif kind in _COMPARISONS:
        op, name = _COMPARISONS[kind]
        bound = ctx.get(name)
        msg = f"must be {op} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    elif kind == "finite_number":
        msg = "must be a finite number"
        fix = "; nan and inf (also a number beyond about 1.8e308, which reads as inf) cannot train"
    elif kind in ("value_error", "assertion_error"):
        error = ctx.get("error")  # the validator's own exception: its text without pydantic's prefix
        msg = str(error) if error is not None else msg.split(", ", 1)[-1]
        if isinstance(value, dict) or "got " in msg:  # a whole-table check, or the message already says it
            seen = ""
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "must be a table"
        if _is_model(where.annotation):
            fix = f"; keys: {', '.join(where.annotation.model_fields)}"
    else:
        msg = re.sub(r"^(Input|List|Tuple|Value|String) should (be|have)", lambda m: f"must {m.group(2)}", msg)
        if kind == "int_from_float" or (kind == "int_type" and isinstance(value, float)):
            fix = "; write a whole number"
        elif kind in ("float_parsing", "int_parsing", "float_type", "int_type") and isinstance(value, str):
            fix = "; write a number without quotes"
        elif kind in ("bool_parsing", "bool_type"):
            fix = "; write true or false"
        elif kind == "string_too_short" and ctx.get("min_length") == 1:
            msg, seen = "must not be empty", ""
        elif kind == "too_short":
            n = ctx.get("min_length", 1)
            msg = f"must have at least {n} entr{'y' if n == 1 else 'ies'}"
            if where.path == "losses":
                fix = '; add a [[losses]] table, e.g. name = "core.regression"'
            elif where.path == "sample.prompts":
                fix = '; sample grids need prompts, e.g. prompts = ["a photo of a cat"]'
    return Problem(where.path or "(recipe)", f"{msg}{seen}{fix}")


def _is_type_mismatch(err: dict) -> bool:
    """The value was not of this union branch's type at all (as opposed to a bad value of the right type)."""
    kind = err["type"]
    return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "int_from_float")


def _structured(err: dict, where: _Where) -> list[Problem] | None:
    """The problems a validator raised as :class:`RecipeProblems`, their paths taken from ``where``."""
    error = (err.get("ctx") or {}).get("error")
    if not isinstance(error, RecipeProblems):
        return None
    base = where.path
    return [Problem(f"{base}.{p.path}" if base and p.path else (p.path or base), p.message) for p in error.problems]


def format_validation_error(exc: pydantic.ValidationError, root: type[pydantic.BaseModel],
                            prefix: str = "") -> list[Problem]:
    """Every entry of ``exc`` as one problem, with paths relative to ``prefix`` (``losses[0].params``).

    Errors inside a union (``weight`` is a number or a schedule table) come once per branch. When a
    branch accepted the value's type and failed on its content (a table missing ``to_step``, or with
    ``to_step`` before ``from_step``), only that branch's errors are kept: the user clearly meant it.
    Otherwise the branches merge into one 'must be A or B' problem.
    """
    problems: list[Problem] = []
    unions: dict[tuple, list[tuple[dict, _Where]]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _locate(root, loc, prefix)
        structured = _structured(err, where)
        if structured is not None:
            problems.extend(structured)
        elif where.union_at is None:
            problems.append(_describe(err, where))
        else:
            unions.setdefault(loc[: where.union_at], []).append((err, where))
    for base, group in unions.items():
        deep = [(e, w) for e, w in group if len(e["loc"]) > len(base) + 1 or not _is_type_mismatch(e)]
        if deep:
            problems.extend(_describe(e, w) for e, w in deep)
            continue
        err, where = group[0]
        nouns = list(dict.fromkeys(_expected_noun(e, w.annotation) for e, w in group))
        problems.append(Problem(where.path, f"must be {' or '.join(nouns)}{got(err.get('input'))}"))
    return problems
