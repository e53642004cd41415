"""``docs/plugins.md`` and ``docs/embedding.md`` say only what the code does.

* A code block whose first line names a file (``# examples/...``) is an excerpt of that file: each run of
  lines between ``...`` lines must appear in it, contiguous, in order. Catches a doc left behind by an
  edit of the example it quotes.
* Every other python or TOML block would be untested: there is exactly one, the loss of ``plugins.md``
  that differentiates through the teacher. It is run, registered as a plugin, and must pass the loss
  contract; written with ``teacher.target`` instead of ``teacher.predict``, or without its
  ``differentiates_through`` line, it must fail it, as the text says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import distillkit
from distillkit.testing import LossContract

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "plugins.md", ROOT / "docs" / "embedding.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
HEADER = re.compile(r"^# (examples/\S+)$")


def _blocks(doc: Path) -> list[tuple[str, str]]:
    return FENCE.findall(doc.read_text())


def _source(body: str) -> str | None:
    """The file a block quotes (its first line), or None."""
    match = HEADER.match(body.splitlines()[0]) if body.strip() else None
    return match.group(1) if match else None


EXCERPTS = [pytest.param(body, id=f"{doc.name}[{i}]:{_source(body)}")
            for doc in DOCS for i, (_, body) in enumerate(_blocks(doc)) if _source(body)]
RUNNABLE = [body for lang, body in _blocks(DOCS[0]) if lang == "python" and not _source(body)]


def test_every_python_and_toml_block_is_checked():
    unchecked = [(doc.name, body.splitlines()[:2]) for doc in DOCS for lang, body in _blocks(doc)
                 if lang in ("python", "toml") and not _source(body) and body not in RUNNABLE]
    assert not unchecked and len(RUNNABLE) == 1, unchecked


@pytest.mark.parametrize("body", EXCERPTS)
def test_excerpt_matches_its_file(body):
    lines = body.rstrip("\n").splitlines()
    path = ROOT / _source(body)
    source = path.read_text().splitlines()
    chunks, chunk = [], []
    for line in lines[1:]:
        if line.strip() == "...":
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(line)
    chunks.append(chunk)
    at = 0
    for chunk in filter(None, chunks):
        found = next((i for i in range(at, len(source) - len(chunk) + 1) if source[i:i + len(chunk)] == chunk), None)
        assert found is not None, f"not in {path.relative_to(ROOT)} (after line {at}):\n" + "\n".join(chunk)
        at = found + len(chunk)


def _plugin(edit=lambda text: text):
    """The runnable block(s), executed after ``edit``, as a plugin registering every loss they define."""
    namespace: dict = {}
    for body in RUNNABLE:
        exec(compile(edit(body), "docs/plugins.md", "exec"), namespace)
    losses = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, distillkit.Loss)
              and v is not distillkit.Loss]

    class Plugin:
        @distillkit.hookimpl
        def register_losses(self, register):
            for cls in losses:
                register(cls)

    return Plugin()


class TestTeacherConsistencyFromTheDocs(LossContract):
    loss = "docs.consistency"
    student_input = "noise"
    extra_plugins = {"docs": _plugin()}


def _edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


@pytest.mark.parametrize("old, new, message", [
    ("ctx.teacher.predict(", "ctx.teacher.target(", "no gradient reaches the student"),
    ('differentiates_through = frozenset({"teacher"})', "", "which it does not declare"),
], ids=["target-instead-of-predict", "undeclared-teacher-path"])
def test_the_contract_fails_the_variants_the_docs_warn_about(request, tmp_path, old, new, message):
    contract = type("Variant", (LossContract,), {"loss": "docs.consistency", "student_input": "noise",
                                                 "extra_plugins": {"docs": _plugin(lambda t: _edited(t, old, new))}})()
    engine = contract._build(request, tmp_path, contract._recipe)
    with pytest.raises(AssertionError, match=message):
        contract.test_generator_phase_follows_its_declared_gradient_paths(engine)
