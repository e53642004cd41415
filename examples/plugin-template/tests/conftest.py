"""The plugin's tests: offline, on CPU, on the tiny models that ``distillkit.testing`` builds.

The hub variables are set before anything imports transformers: with no network, a hub lookup must
fail at once instead of retrying.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["distillkit.testing.fixtures"]  # tiny_sd15_path, tiny_sdxl_path, tiny_sd15, ...
