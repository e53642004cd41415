"""Which critic instance fills each critic role of each loss.

A loss class declares its roles (``Loss.critic_roles()``: role -> qualified critic type; ``critic =
"x.y"`` is the single role ``"critic"``). A ``[[losses]]`` entry binds roles to ``[[critics]]`` ids with
``critics = { fake_score = "fake", gan_head = "head" }``, or ``critic = "id"`` when the loss has exactly
one role. An unbound role takes the only enabled critic of its type, so the common recipe (one critic per
type) needs no ids at all. Everything that can go wrong is reported with the key to set.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
from typing import Optional

from distillkit.recipe.problems import Problem, did_you_mean
from distillkit.recipe.schema import CriticEntry, LossEntry

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.losses.base import Loss


@dataclass
class Binding:
    """``critic_ids[i]``: role -> critic id for loss ``i``, present only when every role of it is bound.
    ``meant``: ids each loss uses or could have meant (a failed binding does not also make them 'unused')."""

    critic_ids: dict[int, dict[str, str]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    used_by_disabled: set[str] = field(default_factory=set)


def critic_roles(cls: type["Loss"], i: int, problems: list[Problem]) -> Optional[dict[str, str]]:
    """The loss class's roles, or None after reporting a class that declares them inconsistently."""
    try:
        return dict(cls.critic_roles())
    except (TypeError, ValueError) as exc:
        problems.append(Problem(f"losses[{i}].name", f"{cls.__qualname__} declares its critics inconsistently "
                                                     f"({exc}); this is a bug in the loss's plugin"))
        return None


def _roles_text(roles: dict[str, str]) -> str:
    return ", ".join(f"{r} ({t})" for r, t in roles.items())


class _LossBinder:
    """Binds one loss entry. ``report`` False (a disabled loss) keeps only the typo checks: a loss that does
    not run cannot be missing a critic, but a misspelt id or role is still a mistake in the file."""

    def __init__(self, i: int, entry: LossEntry, roles: dict[str, str], critics: list[CriticEntry],
                 problems: list[Problem], report: bool):
        self.i, self.entry, self.roles, self.critics = i, entry, roles, critics
        self.problems, self.report = problems, report
        self.ids = [c.instance_id for c in critics]
        self.meant: set[str] = set()
        self.misspelt: set[str] = set()  # roles an unknown role name was close to: not defaulted as well
        self.label = f"losses[{i}] ({entry.name})"

    def _problem(self, path: str, message: str, always: bool = False) -> None:
        if self.report or always:
            self.problems.append(Problem(path, message))

    def explicit(self) -> dict[str, tuple[str, str]]:
        """role -> (id, recipe path it was set at), from ``critic`` and ``critics``."""
        i, entry, roles = self.i, self.entry, self.roles
        out: dict[str, tuple[str, str]] = {}
        if entry.critic is not None:
            self.meant.add(entry.critic)
            if entry.critics:
                self._problem(f"losses[{i}].critic", f"set either losses[{i}].critic or losses[{i}].critics, "
                                                     f"not both", always=True)
            elif not roles:
                self._problem(f"losses[{i}].critic", f"{entry.name!r} uses no critic; remove losses[{i}].critic")
            elif len(roles) > 1:
                example = ", ".join(f'{r} = "..."' for r in roles)
                self._problem(f"losses[{i}].critic", f"{entry.name!r} has {len(roles)} critic roles "
                                                     f"({_roles_text(roles)}), so one id cannot say which; bind "
                                                     f"each: critics = {{ {example} }}", always=True)
            else:
                out[next(iter(roles))] = (entry.critic, f"losses[{i}].critic")
        for role, cid in entry.critics.items():
            self.meant.add(cid)
            path = f"losses[{i}].critics.{role}"
            if role in roles:
                out[role] = (cid, path)
            elif not roles:
                self._problem(path, f"{entry.name!r} uses no critic; remove losses[{i}].critics", always=True)
            else:
                close = difflib.get_close_matches(role, list(roles), n=1, cutoff=0.5)
                self.misspelt.update(close)
                hint = f"; did you mean {close[0]!r}?" if close else f"; its roles: {', '.join(roles)}"
                self._problem(path, f"{entry.name!r} has no critic role {role!r}{hint}", always=True)
        return out

    def check_id(self, role: str, cid: str, path: str) -> Optional[CriticEntry]:
        match = [c for c in self.critics if c.instance_id == cid]
        want = self.roles[role]
        if not match or match[0].name != want:  # a critic of the right type may be the one meant
            self.meant.update(c.instance_id for c in self.critics if c.name == want)
        if not match:
            hint = did_you_mean(cid, self.ids, cutoff=0.5)
            self._problem(path, f"no critic with id {cid!r} (ids: {self.ids or 'none'}){hint}", always=True)
            return None
        if match[0].name != want:
            as_role = "" if len(self.roles) == 1 else f" as its {role!r}"
            self._problem(path, f"critic {cid!r} is a {match[0].name!r}, but {self.label} needs a {want!r}{as_role}; "
                                f"point it at a [[critics]] entry with name = \"{want}\"")
            return None
        return match[0]

    def default(self, role: str) -> Optional[CriticEntry]:
        """The only critic of the role's type, preferring enabled ones (a disabled one is reported by the caller)."""
        want = self.roles[role]
        of_type = [c for c in self.critics if c.name == want]
        candidates = [c for c in of_type if c.enabled] or of_type
        self.meant.update(c.instance_id for c in candidates)
        for_role = "" if len(self.roles) == 1 else f" for its role {role!r}"
        if not candidates:
            self._problem(f"losses[{self.i}]", f"{self.entry.name!r} needs a critic of type {want!r}{for_role}: "
                                               f"add [[critics]] name = \"{want}\"")
            return None
        if len(candidates) > 1:
            key = f"losses[{self.i}].critic" if len(self.roles) == 1 else f"losses[{self.i}].critics.{role}"
            ids = ", ".join(repr(c.instance_id) for c in candidates)
            self._problem(f"losses[{self.i}]", f"{self.entry.name!r} could use any of {len(candidates)} critics "
                                               f"of type {want!r}{for_role} (ids {ids}): set {key} to one of them")
            return None
        return candidates[0]

    def bind(self) -> Optional[dict[str, str]]:
        explicit = self.explicit()
        bound: dict[str, str] = {}
        for role in self.roles:
            if role in explicit:
                cid, path = explicit[role]
                critic = self.check_id(role, cid, path)
            elif role in self.misspelt:  # already reported as the misspelt key
                continue
            else:
                critic = self.default(role)
            if critic is None:
                continue
            bound[role] = critic.instance_id
            if not critic.enabled:
                j = self.ids.index(critic.instance_id)
                self._problem(f"losses[{self.i}]", f"{self.entry.name!r} trains against critics[{j}] "
                                                   f"({critic.instance_id!r}), which has enabled = false: enable "
                                                   f"that critic or set losses[{self.i}].enabled = false")
        self.meant.update(bound.values())
        return bound if len(bound) == len(self.roles) else None


def bind_critics(losses: list[tuple[int, LossEntry, Optional[dict[str, str]]]], critics: list[CriticEntry],
                 problems: list[Problem], *, unknown_critics: set[int] = frozenset()) -> Binding:
    """Bind every loss (``(index, entry, roles)``; roles None: the loss class is unknown) to critics.

    Also reports enabled critics that no loss uses, except when some loss is unknown (it may be the one
    meant to use the critic) and for critics whose own type is unknown (``unknown_critics``, indices).
    """
    binding = Binding()
    all_known = True
    for i, entry, roles in losses:
        if roles is None:  # unknown loss (already reported): the ids it names are not 'unused'
            all_known = False
            binding.used.update(([entry.critic] if entry.critic else []) + list(entry.critics.values()))
            continue
        binder = _LossBinder(i, entry, roles, critics, problems, report=entry.enabled)
        ids = binder.bind()
        (binding.used if entry.enabled else binding.used_by_disabled).update(binder.meant)
        if ids is not None and entry.enabled:
            binding.critic_ids[i] = ids
    if all_known:
        for j, entry in enumerate(critics):
            if j in unknown_critics or not entry.enabled:
                continue
            if entry.instance_id not in binding.used | binding.used_by_disabled:
                problems.append(Problem(f"critics[{j}]", f"critic {entry.instance_id!r} is not used by any loss: "
                                                         f"remove it, or add a loss that trains it"))
    return binding
