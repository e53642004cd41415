"""Score distillation (SDS, NFSD, VSD, DMD2) for distillkit.

Registered through the ``distillkit`` entry-point group. The SDS-family losses land in
their own issue; the package is installed now so recipes and ``distillkit plugins`` see it.
"""

from distillkit import hookimpl


@hookimpl
def register_losses(register):
    """No losses yet."""
