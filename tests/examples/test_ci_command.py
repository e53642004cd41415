"""The README's test command is the command CI runs (``.ci/run``), so what a reader runs is what is tested:
the same installs (the example plugin included) and the same pytest call. CI's script may only add
quieting (``quiet``, ``-q``) and its own shell preamble."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ci_command() -> str:
    steps = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "set ", "cd ", "quiet()")):
            continue
        line = re.sub(r"^quiet ", "", line).replace("pip install -q ", "pip install ")
        steps.append(line)
    return " && ".join(steps)


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    (command,) = [b for b in blocks if "pytest" in b and "pip install" in b]
    return command.strip()


def test_readme_test_command_is_what_ci_runs():
    assert _readme_test_command() == _ci_command()


def test_ci_installs_and_tests_the_example_plugin():
    command = _ci_command()
    assert "-e examples/plugin-template" in command
    assert '"examples/plugin-template/tests"' in (ROOT / "pyproject.toml").read_text()  # collected by the pytest call
