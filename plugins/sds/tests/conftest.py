"""SDS plugin tests: offline, CPU, tiny models from ``distillkit.testing``.

The hub variables are set before anything imports transformers (see distillkit's own conftest).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["distillkit.testing.fixtures"]
