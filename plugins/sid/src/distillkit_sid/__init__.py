"""Score identity Distillation for distillkit.

Registered through the ``distillkit`` entry-point group. The SiD losses and fake-score critic land in
their own issue; the package is installed now so recipes and ``distillkit plugins`` see it.
"""

from distillkit import hookimpl


@hookimpl
def register_losses(register):
    """No losses yet."""
