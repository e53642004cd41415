"""``examples/embed.py``, the program ``docs/embedding.md`` walks through, runs as a user would run it.

The script checks itself as it goes (the callback saw every step, ``metrics.jsonl`` holds what ``step()``
returned, checkpoints at the recipe's interval, the resumed engine reaches its step); this test runs it
in a fresh process and checks what it leaves behind: an export diffusers loaded, the image it made, the
metrics of both engines, and the resume reported through ``logging.getLogger("distillkit")``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_embedding_example_runs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "embed.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "INFO distillkit: resumed from" in done.stderr and "(step 6)" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    run = tmp_path / "run"
    assert (run / "final" / "model_index.json").is_file() and (run / "final" / "unet").is_dir()
    assert Image.open(tmp_path / "one_step.png").size == (64, 64)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    printed = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert len(printed) == 6  # the program's own loop: 6 steps before the export, then fit() to 8
