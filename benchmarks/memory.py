"""Peak memory of a training step against its lower bound, with and without each memory saver (CPU).

The lower bound of one step is what must be resident at its peak (the issue's definition):

    trainable weights + their gradients + optimiser state + frozen weights in their dtypes + activations

where every term is *counted from the live objects* of the engine after warm-up steps: distinct parameter
and buffer storages of every network, one gradient per trainable parameter, every tensor in the optimiser
states, and the activations = the peak over the step of the bytes autograd holds for backward (tensors
passed to ``saved_tensors_hooks``, distinct storages, weights excluded). The measured peak is the
process's peak resident memory during one step (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) minus its resident memory before the model was built but after a dry run of
the same recipe on the tiny fixture (interpreter, libraries, kernels and thread pools all loaded). Ratio = measured / bound; the target is <= 1.15. The bound counts gradients and
activations as if they coexisted in full, which they do not quite (backward frees activations as it
makes gradients), so a ratio slightly under 1 is possible.

Each case runs in a fresh process (so one case's freed memory cannot hide in the next one's peak): 2
warm-up steps (optimiser state allocated), then the measured step.

Cases: ``tiny`` (the tiny SD1.5-shaped fixture, full student, 64x64) and ``sd15`` (an SD1.5-sized model
from the real configs with random weights, LoRA rank 8 student, 128x128, batch 1 — see
``real_models.py``; about 10 GB and a minute or more per case), each as the baseline and with one saver:

    HF_HUB_OFFLINE=1 python benchmarks/memory.py                    # tiny cases (~1 min)
    HF_HUB_OFFLINE=1 python benchmarks/memory.py --size sd15         # SD1.5-sized cases (~10-20 min)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]

#: saver name -> recipe changes (merged into the baseline recipe)
SAVERS = {
    "baseline": {},
    "checkpointing": {"train": {"gradient_checkpointing": True}},
    "bf16 frozen": {"model": {"dtype": "bfloat16"}, "train": {"mixed_precision": "bf16"}},
    "text cache": {"data": {"cache_text_embeddings": True}},
    "eager attention": {"train": {"attention": "eager"}},
    "ema offload": {"student": {"ema": {"decay": 0.99, "offload": True}}},
    "8-bit adam": {"student": {"optim": {"eight_bit": True}}},
    "all savers": {"train": {"gradient_checkpointing": True, "mixed_precision": "bf16", "attention": "sdpa"},
                   "model": {"dtype": "bfloat16"}, "data": {"cache_text_embeddings": True}},
}


# -- measuring ------------------------------------------------------------------------------------------
def rss_kb(field: str = "VmRSS") -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


class SavedActivations:
    """Peak bytes autograd holds for backward during a block: distinct storages passed to the pack hook,
    minus the parameters' (weights are counted as weights), released when the saved tensor dies."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.live, self.peak = exclude, {}, 0
        self.total = 0

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr not in self.exclude:
            if ptr in self.live:
                self.live[ptr][1] += 1
            else:
                self.live[ptr] = [t.untyped_storage().nbytes(), 1]
                self.total += self.live[ptr][0]
                self.peak = max(self.peak, self.total)
            weakref.finalize(t, self._release, ptr)
        return t

    def _release(self, ptr):
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.total -= entry[0]
            del self.live[ptr]

    def __enter__(self):
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def storages_bytes(tensors) -> int:
    seen, n = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            n += s.nbytes()
    return n


def counted(engine) -> dict:
    """The bound's terms, from the engine's live objects."""
    import torch

    from distillkit.engine.memory import all_networks

    modules = [*engine.backbone.frozen_modules().values(), engine.student.unet.module, *engine.critics.values(),
               *all_networks(engine)]
    params, buffers, seen = [], [], set()
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        buffers += list(m.buffers())
    trainable = {id(p) for t in engine.trained.values() for p in t.parameters}
    weights_trainable = storages_bytes([p for p in params if id(p) in trainable])
    weights_frozen = storages_bytes([p for p in params if id(p) not in trainable] + buffers)
    grads = sum(p.numel() * p.element_size() for t in engine.trained.values() for p in t.parameters)
    opt_tensors = [v for t in engine.trained.values() for st in t.optimizer.state.values()
                   for v in st.values() if torch.is_tensor(v)]
    ema = storages_bytes(list(engine.ema.shadow.values())) if engine.ema is not None else 0
    return {"trainable": weights_trainable, "frozen": weights_frozen, "grads": grads,
            "optimizer": storages_bytes(opt_tensors), "ema": ema,
            "weight_ptrs": {p.untyped_storage().data_ptr() for p in params}}


def worker(spec: dict) -> dict:
    import torch

    from distillkit import Engine

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    # A dry run of the same recipe on the tiny fixture first: every module, kernel and thread pool the
    # step needs is then loaded, so the baseline below holds them and the measurement only the run's data.
    dry = json.loads(json.dumps(spec["recipe"]))
    dry["model"]["pretrained"] = spec["tiny_model"]
    dry["data"]["resolution"] = 64
    dry["run"]["output_dir"] += "-dry"
    warm = Engine.from_recipe(dry)
    warm.setup()
    warm.step()
    del warm
    trim()
    baseline_kb = rss_kb()
    engine = Engine.from_recipe(spec["recipe"])
    engine.setup()
    t0 = time.perf_counter()
    for _ in range(spec["warmup"]):
        engine.step()
    warm_s = (time.perf_counter() - t0) / max(1, spec["warmup"])
    c = counted(engine)
    trim()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    with SavedActivations(c.pop("weight_ptrs")) as act:
        t0 = time.perf_counter()
        engine.step()
        step_s = time.perf_counter() - t0
    peak = (rss_kb("VmHWM") - baseline_kb) * 1024
    ema_cpu = c.pop("ema") if engine.ema is not None else 0
    bound = sum(c.values()) + ema_cpu + act.peak
    return {**c, "ema": ema_cpu, "activations": act.peak, "bound": bound, "measured": peak,
            "ratio": peak / bound, "step_s": step_s, "warm_s": warm_s}


# -- cases ------------------------------------------------------------------------------------------------
def merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in extra.items():
        if isinstance(v, dict):
            out[k] = merge(out.get(k, {}), v)
        else:
            out[k] = v
    return out


def base_recipe(size: str, model: Path, out: Path, resolution: int, batch: int) -> dict:
    student = {"timesteps": [999], "input": "noise", "optim": {"lr": 1e-5}}
    if size == "sd15":
        student["lora"] = {"rank": 8}
    return {"run": {"output_dir": str(out), "sample_every": 0, "checkpoint_every": 10**9, "progress": False,
                    "resume": "never"},
            "model": {"family": "sd15", "pretrained": str(model)},
            "student": student, "teacher": {"guidance_scale": 2.0},
            "data": {"prompts": PROMPTS, "resolution": resolution, "batch_size": batch},
            "train": {"device": "cpu"}, "losses": [{"name": "core.regression"}]}


def bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--savers", default=None, help="comma-separated subset of: " + ", ".join(SAVERS))
    ap.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 128 (sd15)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 (tiny), 1 (sd15)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model", default=None, help="sd15: where the random-weight folder is (written once)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="dk-memory-"))
    from distillkit.testing.tiny import build_tiny_sd15

    tiny = build_tiny_sd15(tmp / "tiny_sd15")
    if args.size == "tiny":
        model, res, batch = tiny, args.resolution or 64, args.batch_size or 4
    else:
        sys.path.insert(0, str(HERE))
        from real_models import build

        model = build("sd15", Path(args.model or Path(tempfile.gettempdir()) / "distillkit-sd15-random"))
        res, batch = args.resolution or 128, args.batch_size or 1
    names = args.savers.split(",") if args.savers else list(SAVERS)
    rows = []
    for name in names:
        if name == "8-bit adam" and not bnb_available():
            rows.append((name, None, "bitsandbytes not installed"))
            continue
        recipe = merge(base_recipe(args.size, model, tmp / name.replace(" ", "_"), res, batch), SAVERS[name])
        spec = tmp / "spec.json"
        spec.write_text(json.dumps({"recipe": recipe, "warmup": args.warmup, "threads": args.threads,
                                    "tiny_model": str(tiny)}))
        res_ = subprocess.run([sys.executable, __file__, "--worker", str(spec)], capture_output=True, text=True)
        line = [ln for ln in res_.stdout.splitlines() if ln.startswith("RESULT ")]
        if res_.returncode or not line:
            rows.append((name, None, (res_.stderr.strip().splitlines() or ["failed"])[-1][:100]))
        else:
            rows.append((name, json.loads(line[0][7:]), ""))
        print(f"  {name}: done", file=sys.stderr)
    mb = 2**20
    print(f"peak memory of one training step vs its lower bound: {args.size}, core.regression, {res}x{res}, "
          f"batch {batch}{', LoRA r8 student' if args.size == 'sd15' else ', full student'}; CPU")
    print(f"{'saver':16} {'trainable':>9} {'frozen':>8} {'grads':>8} {'optim':>8} {'ema':>6} {'activ.':>8} "
          f"{'bound MB':>9} {'measured':>9} {'ratio':>6} {'s/step':>7}")
    base = next((r for n, r, _ in rows if n == "baseline" and r), None)
    for name, r, why in rows:
        if r is None:
            print(f"{name:16} skipped: {why}")
            continue
        print(f"{name:16} {r['trainable'] / mb:9.1f} {r['frozen'] / mb:8.1f} {r['grads'] / mb:8.1f} "
              f"{r['optimizer'] / mb:8.1f} {r['ema'] / mb:6.1f} {r['activations'] / mb:8.1f} {r['bound'] / mb:9.1f} "
              f"{r['measured'] / mb:9.1f} {r['ratio']:6.3f} {r['warm_s']:7.2f}")
    if base:
        print("measured peak relative to the baseline: " + ", ".join(
            f"{n} {r['measured'] / base['measured']:.2f}" for n, r, _ in rows if r and n != "baseline"))
    print("ratio = measured / bound (target <= 1.15); MB = 2^20 bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
