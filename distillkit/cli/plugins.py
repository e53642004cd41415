"""``distillkit plugins``: what is installed, what each plugin registers, what failed and what collided;
``distillkit plugins show NAME``: a loss's or critic's ``params`` (from its pydantic ``Config``)."""

from __future__ import annotations

import enum
import types
import typing


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed plugins with their losses, critics and model families; "
                                       "'plugins show NAME' for a loss's or critic's params")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also show modules, hooks and the full traceback of each failure")
    p.set_defaults(func=list_plugins, setup_libraries=False)
    verbs = p.add_subparsers(dest="plugins_command", metavar="{show}")
    show = verbs.add_parser("show", help="the params a loss or critic takes (field, type, default, description)")
    show.add_argument("name", help="a loss or critic as recipes name it (add.distill), or a model family (sd15)")
    show.set_defaults(func=show_item, setup_libraries=False)


# -- distillkit plugins ---------------------------------------------------------------------------
def _provides(reg, name: str) -> str:
    lines = []
    for label, kind in (("losses", "loss"), ("critics", "critic"), ("families", "backbone")):
        items = []
        for item in reg.provided_by(name, kind):
            losers = reg.replaced.get((kind, item))
            items.append(f"{item} (replaces {', '.join(repr(p) for p in losers)}'s)" if losers else item)
        items += [f"{item} (replaced by {winner!r})" for item, winner in sorted(reg.replaced_from(name, kind).items())]
        if items:
            lines.append(f"{label}: {', '.join(items)}")
    return "\n".join(lines)


def list_plugins(args) -> int:
    from rich.table import Table

    from distillkit.cli import output

    reg = _registry()
    table = Table(title="distillkit plugins", header_style="bold", show_lines=True)
    table.add_column("plugin", no_wrap=True)
    table.add_column("distribution", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("provides")
    for name, info in sorted(reg.plugins.items()):
        everyone = [info, *info.rivals] if info.error else [info]
        dists = "\n".join(i.distribution or "-" for i in everyone)
        versions = "\n".join(i.version or "-" for i in everyone)
        if info.error:
            provides = output.text(info.error if args.verbose else info.error.splitlines()[0], "red")
        else:
            provides = output.text(_provides(reg, name) or "(nothing registered yet)",
                                   "" if _provides(reg, name) else "dim")
        if args.verbose:
            provides.append(f"\nmodule: {info.module or '-'}; hooks: {', '.join(info.hooks) or '-'}", "dim")
        table.add_row(output.text(name), output.text(dists), output.text(versions), provides)
    out = output.out_console()
    out.print(table)
    tracebacks = dict(reg.tracebacks)
    for message in reg.collisions:
        out.print(f"[red]name collision:[/] {output.esc(message)}", soft_wrap=True)
    for problem in reg.problems:
        out.print(f"[red]problem:[/] {output.esc(problem)}", soft_wrap=True)
        if args.verbose and problem in tracebacks:
            out.print(output.text(tracebacks[problem].rstrip(), "dim"), soft_wrap=True)
    failed = [info for info in reg.plugins.values() if info.traceback]
    for info in sorted(failed, key=lambda i: i.name):
        if args.verbose:
            out.print(f"[red]traceback of plugin {output.esc(info.label())}:[/]", soft_wrap=True)
            out.print(output.text(info.traceback.rstrip(), "dim"), soft_wrap=True)
    if failed and not args.verbose:
        out.print("[dim]distillkit plugins --verbose shows each failure's traceback[/]")
    return 0


# -- distillkit plugins show NAME -----------------------------------------------------------------
def type_name(annotation) -> str:
    """An annotation as a reader writes it: ``int``, ``str | None``, ``'paper' | 'stylegan_t'``, ``list[int]``."""
    if annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(repr(m.value) for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "multiple of", "min_length": "min length",
           "max_length": "max length", "pattern": "matches"}


def _constraints(info) -> str:
    found = []
    for item in info.metadata:
        for attr, word in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default(info) -> str:
    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, enum.Enum):
        value = value.value
    return repr(value)


def _params_table(title: str, config):
    from rich.table import Table

    from distillkit.cli import output

    table = Table(title=output.text(title), header_style="bold", show_lines=False)
    for column in ("param", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for name, info in config.model_fields.items():
        table.add_row(output.text(name), output.text(type_name(info.annotation) + _constraints(info)),
                      output.text(_default(info)), output.text(info.description or ""))
    return table


#: registry kind -> (the registry's table attribute, how a reader calls it, the recipe table it goes in)
_KINDS = {"loss": ("losses", "loss", "[[losses]]"), "critic": ("critics", "critic", "[[critics]]"),
          "backbone": ("backbones", "model family", "[model]")}


def _summary(reg, kind: str, name: str, cls) -> list[str]:
    plugin = reg.origin.get((kind, name), name.split(".", 1)[0])
    info = reg.plugins.get(plugin)
    who = info.label() if info is not None else repr(plugin)
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines = [f"{_KINDS[kind][1]} {name} ({cls.__module__}.{cls.__qualname__}), from plugin {who}"]
    if doc:
        lines.append(doc)
    if kind == "loss":
        roles = cls.critic_roles() if hasattr(cls, "critic_roles") else ({"critic": cls.critic} if cls.critic else {})
        lines.append("critic roles: " + (", ".join(f"{role} = {critic}" for role, critic in roles.items())
                                         if roles else "none"))
        generator = cls.has_generator_term() if hasattr(cls, "has_generator_term") else True
        critic = cls.has_critic_term() if hasattr(cls, "has_critic_term") else bool(roles)
        lines.append(f"terms: generator {'yes' if generator else 'no'}, critic {'yes' if critic else 'no'}")
        if getattr(cls, "needs_real_data", False):
            lines.append("needs real images (data.images or data.dataset)")
    return lines


def show_item(args) -> int:
    from distillkit.cli import output
    from distillkit.errors import PluginError
    from distillkit.registry import suggest

    reg = _registry()
    name = args.name
    found = [(kind, getattr(reg, attr)[name]) for kind, (attr, _, _) in _KINDS.items() if name in getattr(reg, attr)]
    if not found:
        for kind in _KINDS:
            if (kind, name) in reg.unusable:  # claimed twice: say so, naming both plugins
                raise PluginError(reg.unusable[(kind, name)])
        everything = [n for attr, _, _ in _KINDS.values() for n in getattr(reg, attr)]
        known = "; ".join(f"{attr.replace('backbones', 'families')}: {', '.join(sorted(getattr(reg, attr))) or 'none'}"
                          for attr, word, _ in _KINDS.values())
        hint = reg.plugin_hint(name) or suggest(name, everything)
        raise PluginError(f"no loss, critic or model family is named {name!r}{hint} ({known})")
    out = output.out_console()
    for kind, cls in found:
        for line in _summary(reg, kind, name, cls):
            out.print(output.text(line), soft_wrap=True)
        if kind == "backbone":
            continue
        config = getattr(cls, "Config", None)
        if config is None or not getattr(config, "model_fields", None):
            out.print(output.text(f"params: none (any key in its {_KINDS[kind][2]} params is an error)"))
        else:
            out.print(_params_table(f"{name}: params (in the recipe's {_KINDS[kind][2]} entry)", config))
    return 0


def _registry():
    from distillkit.registry import Registry

    return Registry.discover()
