"""``python -m distillkit`` (what ``accelerate launch -m distillkit run ...`` executes)."""

import sys

from distillkit.cli import main

sys.exit(main())
