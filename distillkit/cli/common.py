"""Arguments shared by the verbs that read a recipe."""

from __future__ import annotations


def add_recipe_args(p) -> None:
    p.add_argument("recipe", help="path to a recipe TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set run.max_steps=10 --set losses[0].weight=2 "
                        "(repeatable; values are parsed as TOML)")
