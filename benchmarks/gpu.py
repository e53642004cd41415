"""GPU benchmark: seconds per step, images per second, peak memory and the largest batch that fits, for ADD,
SiD and DMD2 steps on SD1.5- and SDXL-sized models (random weights from the real configs), with the memory
savers; and the 1-step latency of an exported student through the diffusers pipeline at 512².

Without CUDA it says so and exits 0 (the CPU figures come from ``memory.py`` and ``engine_overhead.py``).

Each case is a shipped recipe (``recipes/add_sd15.toml``, ``sid_sdxl.toml``, ``dmd2_sd15.toml`` ...) with the
model replaced by a random-weight folder of the same architecture (``real_models.py``), the data by a
procedural image folder and prompt list, weight files by random initialisation, and the savers of the
case applied through ``--set``-style overrides. Per case: 2 warm-up steps, ``--steps`` timed steps
(``torch.cuda.synchronize`` around each), peak ``torch.cuda.max_memory_allocated``; then the batch size is
doubled until a step runs out of memory (``--max-batch`` caps the search).

    python benchmarks/gpu.py                                   # every case whose recipe exists
    python benchmarks/gpu.py --cases add_sd15,sid_sdxl --steps 10
    python benchmarks/gpu.py --latency-only                     # the exported-student latency alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["a photo of a cat", "a watercolor landscape", "a red sports car", "a bowl of fruit"]

#: case -> (recipe file, family, resolution, overrides on top of the recipe)
SAVERS_ON = {"train.gradient_checkpointing": True, "train.attention": "sdpa", "data.cache_text_embeddings": True,
             "model.dtype": "bfloat16", "train.mixed_precision": "bf16"}
CASES = {
    "add_sd15": ("add_sd15.toml", "sd15", 512, {}),
    "add_sdxl": ("add_sdxl.toml", "sdxl", 512, {}),
    "sid_sd15": ("sid_sd15.toml", "sd15", 512, {}),
    "sid_sdxl": ("sid_sdxl.toml", "sdxl", 1024, {}),
    "dmd2_sd15": ("dmd2_sd15.toml", "sd15", 512, {}),
    "dmd2_sdxl": ("dmd2_sdxl.toml", "sdxl", 1024, {}),
}


def recipe_for(case: str, model: Path, images: Path, out: Path, batch: int, savers: bool) -> dict:
    """The shipped recipe of ``case`` as a dict, pointed at the random-weight model and local data."""
    from distillkit.recipe.toml_io import read_toml

    name, family, res, extra = CASES[case]
    r = read_toml(ROOT / "recipes" / name)
    r["run"].update(output_dir=str(out), sample_every=0, checkpoint_every=10**9, progress=False, resume="never",
                    max_steps=10**6)
    r["model"].update(family=family, pretrained=str(model))
    data = r.setdefault("data", {})
    uses_images = bool(data.get("images") or data.get("dataset"))  # as the shipped recipe trains
    for key in ("images", "dataset", "prompts"):
        data.pop(key, None)
    if uses_images:
        data["images"] = str(images)
    else:
        data["prompts"] = PROMPTS
    data.update(resolution=res, batch_size=batch)
    for c in r.get("critics", []):  # weight files of feature networks: random initialisation instead
        params = c.setdefault("params", {})
        if c.get("name") == "add.discriminator":
            params.update(allow_random_init=True, text_encoder="backbone", image_encoder="same")
            for k in ("weights", "text_encoder_weights", "image_encoder_weights"):
                params.pop(k, None)
    r.setdefault("train", {})["gradient_accumulation_steps"] = 1  # timed per micro-batch
    if savers:
        for dotted, value in SAVERS_ON.items():
            section, key = dotted.split(".")
            r.setdefault(section, {})[key] = value
    for dotted, value in extra.items():
        section, key = dotted.split(".")
        r.setdefault(section, {})[key] = value
    return r


def time_steps(engine, steps: int) -> tuple[float, int]:
    import torch

    for _ in range(2):
        engine.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), torch.cuda.max_memory_allocated()


def run_case(case: str, model: Path, images: Path, tmp: Path, batch: int, steps: int, savers: bool) -> dict:
    import torch

    from distillkit import Engine

    engine = Engine.from_recipe(recipe_for(case, model, images, tmp / f"{case}-{batch}-{savers}", batch, savers))
    try:
        s, peak = time_steps(engine, steps)
        world = engine.accelerator.num_processes
        return {"s_step": s, "images_s": batch * world * engine.recipe.train.gradient_accumulation_steps / s,
                "peak_gb": peak / 2**30}
    finally:
        del engine
        torch.cuda.empty_cache()


def largest_batch(case, model, images, tmp, savers: bool, cap: int) -> int:
    import torch

    best, b = 0, 1
    while b <= cap:
        try:
            run_case(case, model, images, tmp, b, 1, savers)
            best, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def latency(model: Path, tmp: Path, runs: int = 10) -> float:
    """1-step latency at 512² of an exported SD1.5 student (the export of a 1-step regression run)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from distillkit import Engine

    engine = Engine.from_recipe({
        "run": {"output_dir": str(tmp / "latency"), "sample_every": 0, "progress": False, "max_steps": 1},
        "model": {"family": "sd15", "pretrained": str(model), "dtype": "float16"},
        "student": {"timesteps": [999], "input": "noise"}, "data": {"prompts": PROMPTS, "resolution": 512,
                                                                       "batch_size": 1},
        "train": {"mixed_precision": "fp16"}, "losses": [{"name": "core.regression"}]})
    engine.fit()
    pipe = StableDiffusionPipeline.from_pretrained(tmp / "latency" / "final", torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=0.0, height=512, width=512, output_type="pt")
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "distillkit-real-models"))
    ap.add_argument("--latency-only", action="store_true")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here, nothing to measure (CPU figures: benchmarks/memory.py, "
              "benchmarks/engine_overhead.py).")
        return 0
    sys.path.insert(0, str(HERE))
    from real_models import build

    from distillkit.testing.shapes import write_shapes_dataset

    tmp = Path(tempfile.mkdtemp(prefix="dk-gpu-"))
    models = Path(args.models)
    images = write_shapes_dataset(tmp / "shapes", n=64, size=1024)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    sd15 = build("sd15", models / "sd15")
    print(f"1-step latency of an exported SD1.5 student at 512x512 (fp16, diffusers pipeline): "
          f"{latency(sd15, tmp):.3f} s")
    if args.latency_only:
        return 0
    print(f"{'case':16} {'savers':6} {'batch':>5} {'s/step':>8} {'img/s':>7} {'peak GB':>8} {'max batch':>9}")
    for case in args.cases.split(","):
        name, family, res, _ = CASES[case]
        if not (ROOT / "recipes" / name).exists():
            print(f"{case:16} skipped: no recipes/{name}")
            continue
        model = build(family, models / family)
        for savers in (False, True):
            try:
                r = run_case(case, model, images, tmp, args.batch_size, args.steps, savers)
                top = largest_batch(case, model, images, tmp, savers, args.max_batch)
                print(f"{case:16} {'on' if savers else 'off':6} {args.batch_size:5d} {r['s_step']:8.3f} "
                      f"{r['images_s']:7.2f} {r['peak_gb']:8.2f} {top:9d}", flush=True)
            except torch.OutOfMemoryError:
                print(f"{case:16} {'on' if savers else 'off':6} {args.batch_size:5d} out of memory", flush=True)
            except Exception as err:  # keep going: one broken case must not hide the others
                print(f"{case:16} {'on' if savers else 'off':6} failed: {type(err).__name__}: {err}"[:200])
    print(json.dumps({"note": "savers on = " + ", ".join(f"{k}={v}" for k, v in SAVERS_ON.items())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
