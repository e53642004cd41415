"""From a TOML file (or a dict) to a recipe whose every name is resolved, reporting all problems at once.

The path is ``read_toml`` → ``apply_overrides`` (``--set a.b=c``) → ``validate_structure`` (stage 1, the
pydantic schema) → ``resolve`` (stage 2, the plugin registry). Each stage collects every problem it can
find and raises a single :class:`~distillkit.errors.RecipeError`, so one ``distillkit validate`` shows the
whole list instead of one fix per run. Every problem is one line that names the field in the recipe's
own words (``losses[1].params.guidance_scale``), the bad value, and the fix. Stage 2 loads no model: a
recipe can be checked on a laptop before a GPU job is queued.

``dump_recipe`` writes the fully-resolved recipe (defaults filled in) back as TOML for the run
directory, so a run can be repeated from its own folder even after the defaults change.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pydantic

from distillkit.errors import PluginError, RecipeError
from distillkit.recipe.schema import CriticEntry, LossEntry, Recipe

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.losses.base import Loss
    from distillkit.models.backbone import Backbone
    from distillkit.registry import Registry
    from distillkit.roles.critic import Critic

__all__ = [
    "ResolvedCritic", "ResolvedLoss", "ResolvedRecipe", "apply_overrides", "dump_recipe", "format_validation_error",
    "load_recipe", "read_toml", "resolve", "validate_structure",
]


# ================================================================================================
# Reading
# ================================================================================================
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def read_toml(path: str | Path) -> dict:
    """Parse a recipe file. A syntax error names the file, line and column so an editor can jump there."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError([f"{path}: no such recipe file"], str(path)) from None
    except IsADirectoryError:
        raise RecipeError([f"{path}: is a folder; give the path of a .toml recipe file"], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8"], str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([_toml_error_line(path, text, exc)], str(path)) from None


def _toml_error_line(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    # Python >= 3.14 carries the position as attributes; older versions only in the message.
    msg = getattr(exc, "msg", None) or str(exc)
    line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    m = _TOML_POSITION.search(msg)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        msg = msg[: m.start()]
    if line is None:
        return f"{path}: TOML syntax error: {msg}"
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    where = f" in: {_short(shown)}" if shown else ""
    return f"{path}:{line}:{col}: TOML syntax error: {msg} (line {line}, column {col}{where})"


# ================================================================================================
# --set overrides
# ================================================================================================
_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")
_SET_EXAMPLE = "e.g. --set student.optim.lr=1e-5 or --set losses[0].weight=2.5"


@dataclass(frozen=True)
class _Key:
    name: str  # a table key; all digits also means a list index when the container is a list


@dataclass(frozen=True)
class _Index:
    index: int  # an explicit [N]


def _parse_path(path: str) -> list[_Key | _Index] | None:
    tokens: list[_Key | _Index] = []
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            return None
        tokens.append(_Key(m.group(1)))
        tokens.extend(_Index(int(i)) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tokens


def _parse_value(raw: str) -> Any:
    """A TOML value when ``raw`` is one (``true``, ``1e-5``, ``[1, 4]``, ``{rank = 4}``), else ``raw`` itself."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    # "x\nw = 1" parses into two keys: that was not one value, so keep the text as the user wrote it
    return parsed["v"] if list(parsed) == ["v"] else raw


def _render(tokens: Sequence[_Key | _Index]) -> str:
    out = ""
    for tok in tokens:
        out += f"[{tok.index}]" if isinstance(tok, _Index) else (f".{tok.name}" if out else tok.name)
    return out


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({_short(repr(value))})"


def _apply_one(data: dict, override: str) -> str | None:
    """Apply one ``KEY=VALUE`` in place; return the problem line instead when it cannot be applied."""
    head = f"--set {override!r}"
    if "=" not in override:
        return f"{head}: expected KEY=VALUE, {_SET_EXAMPLE}"
    path, raw = (s.strip() for s in override.split("=", 1))
    if not path:
        return f"{head}: nothing before '='; name the key to set, {_SET_EXAMPLE}"
    tokens = _parse_path(path)
    if tokens is None:
        return (f"{head}: malformed key {path!r}; use dotted keys with optional list indices, {_SET_EXAMPLE}")
    remove = raw == ""  # `--set key=` deletes the key so its default applies (TOML has no null)
    value = _parse_value(raw)
    node: Any = data
    for pos, tok in enumerate(tokens):
        here = _render(tokens[:pos]) or "the recipe"
        last = pos == len(tokens) - 1
        as_index = isinstance(tok, _Index) or (isinstance(node, list) and tok.name.isdigit())
        if as_index:
            index = tok.index if isinstance(tok, _Index) else int(tok.name)
            if not isinstance(node, list):
                return (f"{head}: {here} is {_kind(node)}, not a list, so it cannot be indexed with [{index}]; "
                        f"use a key name instead")
            if index >= len(node):
                valid = f"valid: 0..{len(node) - 1}" if node else "the list is empty"
                return (f"{head}: index {index} is out of range for {here}, which has {len(node)} "
                        f"entr{'y' if len(node) == 1 else 'ies'} ({valid}); add the entry to the recipe file first")
            if last:
                if remove:
                    return f"{head}: an empty value removes a key, but {_render(tokens)} is a list entry"
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            return f"{head}: {here} is {_kind(node)}, not a table, so it has no key {tok.name!r}"
        if last:
            if remove:
                node.pop(tok.name, None)
            else:
                node[tok.name] = value
            break
        if tok.name not in node:
            nxt = tokens[pos + 1]
            if isinstance(nxt, _Index) or nxt.name.isdigit():
                return (f"{head}: {_render(tokens[:pos + 1])} is not in the recipe, so it cannot be indexed; "
                        f"add the list to the recipe file first")
            node[tok.name] = {}  # a new table; the schema rejects it if the key is not allowed there
        node = node[tok.name]
    return None


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``a.b[0].c=value`` applied, in order (later ones win).

    The value is read as a TOML value when it is one (``true``, ``1e-5``, ``[1, 4]``, ``"text"``,
    ``{rank = 4}``), otherwise taken as a bare string (``sd15``, ``runs/x``), so shell quoting stays light.
    An empty value (``a.b=``) removes the key, so the schema default applies; ``a.b=""`` sets "".
    New tables may be created (the schema then rejects unknown keys); lists must already exist.
    """
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    out = copy.deepcopy(data)
    problems = [p for p in (_apply_one(out, o) for o in overrides) if p]
    if problems:
        raise RecipeError(problems, "--set")
    return out


# ================================================================================================
# Stage 1: structure
# ================================================================================================
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


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value: Any) -> str:
    return f" (got {_short(repr(value))})"


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _union_members(tp: Any) -> tuple:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return ()


def _strip_optional(tp: Any) -> Any:
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


_COMPARISONS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


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


def _describe(err: dict, where: _Where) -> str:
    """One problem line: ``<path>: <message> (got <value>); <fix>``."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    msg = err["msg"]
    got, fix = _got(value), ""
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        parent = where.path[: -len(key) - 1]
        msg = f"unknown key {key!r}"
        fix = _unknown_key(key, where.section, f"[{parent}]" if parent else "the top level")
    elif kind == "missing":
        got, msg = "", "missing required key"
        info = where.section.model_fields.get(err["loc"][-1]) if _is_model(where.section) else None
        if info is not None and info.description:
            fix = f"; {info.description}"
    elif kind == "literal_error":
        allowed = typing.get_args(where.annotation)
        if allowed:
            msg = "must be one of " + ", ".join(repr(a) for a in allowed)
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
            fix = f"; did you mean {close[0]!r}?" if close else ""
        else:
            msg = msg.replace("Input should be", "must be one of")
    elif kind in _COMPARISONS:
        op, name = _COMPARISONS[kind]
        bound = ctx.get(name)
        msg = f"must be {op} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    elif kind in ("value_error", "assertion_error"):
        error = ctx.get("error")  # the validator's own exception: its text without pydantic's prefix
        msg = str(error) if error is not None else msg.split(", ", 1)[-1]
        if isinstance(value, dict) or "got " in msg:  # a whole-table check, or the message already says it
            got = ""
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "must be a table"
        if _is_model(where.annotation):
            fix = f"; keys: {', '.join(where.annotation.model_fields)}"
    else:
        msg = re.sub(r"^(Input|List|Tuple|Value) should (be|have)", lambda m: f"must {m.group(2)}", msg)
        if kind == "int_from_float":
            fix = "; write a whole number"
        elif kind in ("float_parsing", "int_parsing") and isinstance(value, str):
            fix = "; write a number without quotes"
        elif kind == "bool_parsing":
            fix = "; write true or false"
        elif kind == "too_short":
            n = ctx.get("min_length", 1)
            msg = f"must have at least {n} entr{'y' if n == 1 else 'ies'}"
            if where.path == "losses":
                fix = '; add a [[losses]] table, e.g. name = "core.regression"'
    return f"{where.path or '(recipe)'}: {msg}{got}{fix}"


def _cross_check_lines(err: dict) -> list[str]:
    """``Recipe._cross_checks`` joins its problems with '; ' and each already starts with its own path."""
    error = (err.get("ctx") or {}).get("error")
    text = str(error) if error is not None else err["msg"].split(", ", 1)[-1]
    return [p.strip() for p in text.split("; ") if p.strip()]


def _is_type_mismatch(err: dict) -> bool:
    """The value was not of this union branch's type at all (as opposed to a bad value of the right type)."""
    kind = err["type"]
    return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "int_from_float")


def format_validation_error(exc: pydantic.ValidationError, root: type[pydantic.BaseModel],
                            prefix: str = "") -> list[str]:
    """Every entry of ``exc`` as one line, with paths relative to ``prefix`` (``losses[0].params``).

    Errors inside a union (``weight`` is a number or a schedule table) come once per branch. When a
    branch accepted the value's type and failed on its content (a table missing ``to_step``, or with
    ``to_step`` before ``from_step``), only that branch's errors are kept: the user clearly meant it.
    Otherwise the branches merge into one 'must be A or B' line.
    """
    lines: list[str] = []
    unions: dict[tuple, list[tuple[dict, _Where]]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if not loc and not prefix and err["type"] == "value_error":
            lines.extend(_cross_check_lines(err))
            continue
        where = _locate(root, loc, prefix)
        if where.union_at is None:
            lines.append(_describe(err, where))
        else:
            unions.setdefault(loc[: where.union_at], []).append((err, where))
    for base, group in unions.items():
        deep = [(e, w) for e, w in group if len(e["loc"]) > len(base) + 1 or not _is_type_mismatch(e)]
        if deep:
            lines.extend(_describe(e, w) for e, w in deep)
            continue
        err, where = group[0]
        nouns = list(dict.fromkeys(_expected_noun(e, w.annotation) for e, w in group))
        lines.append(f"{where.path}: must be {' or '.join(nouns)}{_got(err.get('input'))}")
    return lines


def validate_structure(data: Mapping, source: str | Path | None = None) -> Recipe:
    """Stage 1: the pydantic schema. Raises one RecipeError with a line per problem."""
    if not isinstance(data, Mapping):
        raise RecipeError([f"a recipe must be a table of sections, got {type(data).__name__}"],
                          None if source is None else str(source))
    try:
        return Recipe.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise RecipeError(format_validation_error(exc, Recipe), None if source is None else str(source)) from None


# ================================================================================================
# Stage 2: names and plugin params
# ================================================================================================
@dataclass
class ResolvedLoss:
    entry: LossEntry
    cls: type["Loss"]
    config: pydantic.BaseModel  # the loss's validated ``params``
    critic_id: Optional[str]  # instance id of the critic it is bound to (None: the loss uses no critic)


@dataclass
class ResolvedCritic:
    entry: CriticEntry
    cls: type["Critic"]
    config: pydantic.BaseModel
    id: str


@dataclass
class ResolvedRecipe:
    """A recipe with every name looked up and every ``params`` table validated; still no model loaded."""

    recipe: Recipe
    source: Optional[Path]
    base_dir: Path  # folder relative paths in the recipe are taken from
    backbone_cls: type["Backbone"]
    losses: list[ResolvedLoss] = field(default_factory=list)
    critics: list[ResolvedCritic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # asset problems: fatal for `run`, shown by `validate`

    def critic(self, critic_id: str) -> ResolvedCritic:
        for c in self.critics:
            if c.id == critic_id:
                return c
        raise KeyError(f"no critic with id {critic_id!r} (ids: {[c.id for c in self.critics]})")


def _params(cls: type, params: dict, path: str, problems: list[str]) -> Optional[pydantic.BaseModel]:
    try:
        return cls.Config.model_validate(params)
    except pydantic.ValidationError as exc:
        problems.extend(format_validation_error(exc, cls.Config, f"{path}.params"))
        return None


def _bind_critic(i: int, entry: LossEntry, needed: Optional[str], critics: list[CriticEntry],
                 problems: list[str]) -> tuple[Optional[str], set[str]]:
    """The id of the critic loss ``i`` trains against (None after adding the reason to ``problems``), and
    the ids it could have meant, which therefore do not count as unused."""
    label = f"losses[{i}] ({entry.name})"
    if entry.critic is not None:
        match = [c for c in critics if c.instance_id == entry.critic]
        if needed is None:
            problems.append(f"losses[{i}].critic: {entry.name!r} uses no critic; remove losses[{i}].critic")
        elif match and match[0].name != needed:  # a missing id is reported by stage 1
            problems.append(f"losses[{i}].critic: critic {entry.critic!r} is a {match[0].name!r}, but {label} "
                            f"needs a {needed!r}; point it at a [[critics]] entry with name = \"{needed}\"")
        else:
            return (entry.critic if match else None), {entry.critic}
        return None, {entry.critic}
    if needed is None:
        return None, set()
    match = [c.instance_id for c in critics if c.name == needed]
    if not match:
        problems.append(f"{label} needs a critic of type {needed!r}: add [[critics]] name = \"{needed}\"")
        return None, set()
    if len(match) > 1:
        ids = ", ".join(repr(m) for m in match)
        problems.append(f"{label} could use any of {len(match)} critics of type {needed!r} (ids {ids}): "
                        f"set losses[{i}].critic to one of them")
        return None, set(match)
    return match[0], {match[0]}


def _registration_hint(registry: "Registry", kind: str, name: str | None = None) -> str:
    """Why a name may be missing: the registration problems of its plugin (or, for a family, of any
    plugin's backbone registration). Not raised at discovery, so one broken plugin spoils no other recipe."""
    plugin = name.split(".", 1)[0] if name and "." in name else None
    related = [p for p in registry.problems
               if kind in p and (plugin is None or f"plugin {plugin!r}" in p)]
    return "".join(f"; {p}" for p in related)


def resolve(recipe: Recipe, registry: "Registry", *, source: str | Path | None = None,
            base_dir: str | Path | None = None) -> ResolvedRecipe:
    """Stage 2: look up the family, every loss and critic, validate their ``params``, bind losses to critics.

    Raises one RecipeError with every problem; critic asset problems (missing weight files) come back
    as ``warnings`` since ``validate`` should report them without failing.

    ``enabled = false`` entries are still looked up and validated (a typo should not wait until the
    entry is switched back on) but are left out of the result, so an ablation is one key. A critic only
    disabled losses would have used is dropped with them rather than reported as unused; a disabled
    critic that an enabled loss trains against is an error.
    """
    problems: list[str] = []
    warnings: list[str] = []
    backbone_cls = None
    try:
        backbone_cls = registry.backbone(recipe.model.family)
    except PluginError as exc:
        problems.append(f"model.family: {exc}{_registration_hint(registry, 'backbone')}")

    critics: list[tuple[int, ResolvedCritic]] = []
    unknown_critics: set[int] = set()
    for j, entry in enumerate(recipe.critics):
        try:
            cls = registry.critic(entry.name)
        except PluginError as exc:
            problems.append(f"critics[{j}].name: {exc}{_registration_hint(registry, 'critic', entry.name)}")
            unknown_critics.add(j)
            continue
        config = _params(cls, entry.params, f"critics[{j}]", problems)
        if config is not None:
            critics.append((j, ResolvedCritic(entry, cls, config, entry.instance_id)))

    index = {entry.instance_id: j for j, entry in enumerate(recipe.critics)}  # ids are unique after stage 1
    losses: list[ResolvedLoss] = []
    used: set[str] = set()  # ids an enabled loss trains against (or, on a failed binding, could have meant)
    used_by_disabled: set[str] = set()  # the same for disabled losses: such a critic is dropped, not unused
    all_losses_known = True
    for i, entry in enumerate(recipe.losses):
        try:
            cls = registry.loss(entry.name)
        except PluginError as exc:
            problems.append(f"losses[{i}].name: {exc}{_registration_hint(registry, 'loss', entry.name)}")
            all_losses_known = False
            if entry.critic:
                used.add(entry.critic)
            continue
        config = _params(cls, entry.params, f"losses[{i}]", problems)
        if not entry.enabled:  # binding problems of a loss that is not run are not problems of this recipe
            used_by_disabled |= _bind_critic(i, entry, cls.critic, recipe.critics, [])[1]
            continue
        critic_id, meant = _bind_critic(i, entry, cls.critic, recipe.critics, problems)
        used |= meant  # a critic a failed binding could have meant is not also reported as unused
        if critic_id is not None and not recipe.critics[index[critic_id]].enabled:
            problems.append(f"losses[{i}] ({entry.name}) trains against critics[{index[critic_id]}] "
                            f"({critic_id!r}), which has enabled = false: enable that critic or set "
                            f"losses[{i}].enabled = false")
        if cls.needs_real_data and not recipe.data.has_images:
            problems.append(f"losses[{i}] ({entry.name}) needs real images: set data.images or data.dataset")
        if config is not None:
            losses.append(ResolvedLoss(entry, cls, config, critic_id))

    if all_losses_known:  # an unknown loss may be the one meant to use a critic: do not blame the critic
        for j, entry in enumerate(recipe.critics):
            if entry.enabled and entry.instance_id not in used | used_by_disabled and j not in unknown_critics:
                problems.append(f"critics[{j}] ({entry.instance_id!r}) is not used by any loss: remove it, or add "
                                f"a loss that trains it")
    if problems:
        raise RecipeError(problems, None if source is None else str(source))
    kept = [(j, rc) for j, rc in critics if rc.entry.enabled and rc.id in used]
    for j, rc in kept:  # asset problems only of critics that will be built
        # A critic names its own fields as ``critics[*].params.x`` (it cannot know its index).
        warnings.extend(w.replace("critics[*]", f"critics[{j}]") if "critics[*]" in w
                        else f"critics[{j}] ({rc.entry.name}): {w}" for w in rc.cls.check_assets(rc.config))
    src = Path(source) if source is not None else None
    if base_dir is None:
        base_dir = src.resolve().parent if src is not None else Path.cwd()
    return ResolvedRecipe(recipe, src, Path(base_dir), backbone_cls, losses, [rc for _, rc in kept], warnings)


def load_recipe(path_or_dict: str | Path | Mapping, overrides: Sequence[str] = (), registry: "Registry | None" = None,
                *, base_dir: str | Path | None = None) -> ResolvedRecipe:
    """Read, override, validate and resolve a recipe. A dict is taken as already-parsed TOML (embedding);
    its relative paths are then taken from ``base_dir`` (default: the working directory)."""
    if isinstance(path_or_dict, Mapping):
        source, data = None, copy.deepcopy(dict(path_or_dict))
    else:
        source, data = Path(path_or_dict), read_toml(path_or_dict)
    if overrides:
        try:
            data = apply_overrides(data, overrides)
        except RecipeError as exc:
            raise RecipeError(exc.problems, None if source is None else str(source)) from None
    recipe = validate_structure(data, source)
    if registry is None:
        from distillkit.registry import Registry

        registry = Registry.discover()
    return resolve(recipe, registry, source=source, base_dir=base_dir)


# ================================================================================================
# Writing
# ================================================================================================
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # '1e-05', '0.999', '2.0': all valid TOML floats
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime.date, datetime.time)):  # TOML's own date/time literals (datetime is a date)
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise ValueError(f"{where}: a list with a null cannot be written as TOML")
        return "[" + ", ".join(_toml_value(x, f"{where}[{k}]") for k, x in enumerate(v)) + "]"
    if isinstance(v, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(x, f'{where}.{k}')}" for k, x in v.items() if x is not None]
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"{where}: cannot write a {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _emit(lines: list[str], path: list[str], table: Mapping, header: str | None) -> None:
    if header is not None:
        lines.extend(["", header])
    where = ".".join(path) or "(recipe)"
    for k, v in table.items():
        if v is None or isinstance(v, Mapping) or _is_table_array(v):
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v, f'{where}.{k}')}")
    for k, v in table.items():
        sub = path + [_toml_key(k)]
        if isinstance(v, Mapping):
            _emit(lines, sub, v, f"[{'.'.join(sub)}]")
        elif _is_table_array(v):
            for item in v:
                _emit(lines, sub, item, f"[[{'.'.join(sub)}]]")


def dump_recipe(recipe: Recipe) -> str:
    """The recipe with every default filled in, as TOML that reads back to an equal :class:`Recipe`.

    TOML has no null, so None-valued keys are left out and read back as their default. That is exact
    for every field whose default is None; ``student.optim.grad_clip = None`` (set from Python) cannot
    be written and reads back as the default 1.0.
    """
    lines = ["# distillkit recipe, fully resolved: every default is written out"]
    _emit(lines, [], recipe.model_dump(mode="python"), None)
    return "\n".join(lines).strip() + "\n"
