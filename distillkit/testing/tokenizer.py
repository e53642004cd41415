"""A real CLIP tokenizer that exists offline, small enough to commit.

There is no model hub here, and transformers 5.x hands back a silently broken 2-token tokenizer for a
hub id it cannot reach, so tiny fixtures need a tokenizer built from files we ship. open_clip bundles
OpenAI's CLIP BPE merges; laying them out the way CLIP's ``vocab.json`` is laid out (256 byte symbols,
the same 256 with ``</w>``, one entry per merge in rank order, then ``<|startoftext|>`` and
``<|endoftext|>``) reproduces CLIP-L's ids exactly. Keeping only the first ``n_merges`` merges keeps
every id a word gets from those merges identical to the real tokenizer's, while the vocabulary
(512 + n_merges + 2 entries) stays small enough for a tiny text encoder's embedding table.

``build_tiny_clip_vocab`` generated the committed ``assets/vocab.json`` and ``assets/merges.txt``; it
is kept so the assets can be regenerated and checked, not run at test time.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
#: CLIP's context length; also what SD1.5/SDXL pad every prompt to
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from each byte to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def open_clip_bpe_path() -> Path:
    """The merges file open_clip ships, located without importing open_clip (which pulls in torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; it ships the CLIP BPE merges this needs")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def build_tiny_clip_vocab(out_dir: str | Path, n_merges: int = 1000, bpe_path: str | Path | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP tokenizer with the first ``n_merges`` merges."""
    lines = gzip.open(bpe_path or open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : n_merges + 1]]  # line 0 is the version header
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the merges produced duplicate vocabulary entries; the BPE file is not CLIP's")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    return out


@lru_cache(maxsize=1)
def _tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((ASSETS / "vocab.json").read_text(encoding="utf-8"))
    lines = (ASSETS / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def tiny_clip_tokenizer():
    """A fresh ``CLIPTokenizer`` (about 1514 ids) from the committed assets; no network, no hub."""
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_LENGTH)
