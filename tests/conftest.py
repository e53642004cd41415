"""Test configuration shared by every distillkit test.

The hub variables are set at import, before anything imports transformers: without them a hub id makes
transformers retry for minutes and then return a broken 2-token tokenizer instead of failing.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["distillkit.testing.fixtures"]
