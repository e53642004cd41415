"""SiD plugin tests: offline, CPU, tiny models from ``distillkit.testing``.

The hub variables are set before anything imports transformers (see distillkit's own conftest).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["distillkit.testing.fixtures"]

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# the shared helpers (sid_helpers.py) import by name under --import-mode=importlib
sys.path.insert(0, str(Path(__file__).parent))
