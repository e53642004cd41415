from distillkit.engine.engine import Engine

__all__ = ["Engine"]
