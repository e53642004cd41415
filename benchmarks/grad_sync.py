"""Gradient averaging across processes: fused buckets (the engine's) vs one all-reduce per tensor (before).

Two gloo processes on this machine's CPU average the gradients of real layouts, with tensor shapes taken
from the real UNet configs (built on the ``meta`` device, so no weights are allocated):

* ``tiny``      the tiny SD1.5-shaped test UNet, full fine-tune (208 tensors, 0.8 M values);
* ``lora64``    an SD1.5 UNet's LoRA rank-64 adapters on to_q/k/v/out (a LoRA student or fake score:
                256 tensors, 12.8 M values);
* ``sd15``      the full SD1.5 UNet (686 tensors, 860 M values = 3.4 GB of fp32 gradients per process;
                only with ``--full``: it needs ~9 GB of memory in all).

Each case runs ``--repeats`` interleaved pairs (per-tensor, bucketed, per-tensor, ...) after one warm-up
pair and prints the medians and their ratio. Both methods must give the same averaged gradients (checked
before timing). The per-tensor baseline calls ``accelerator.reduce`` as the engine did.

    HF_HUB_OFFLINE=1 python benchmarks/grad_sync.py             # tiny and lora64
    HF_HUB_OFFLINE=1 python benchmarks/grad_sync.py --full      # also the full SD1.5 UNet
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from distillkit.testing.real_configs import SD15_UNET  # noqa: E402


TINY_UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)


def shapes(case: str) -> list[tuple[int, ...]]:
    from diffusers import UNet2DConditionModel

    config = TINY_UNET if case == "tiny" else SD15_UNET
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    if case != "lora64":
        return [tuple(p.shape) for p in unet.parameters()]
    out = []
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") \
                and (not name.endswith(".0") or name.endswith("to_out.0")):
            out += [(64, m.in_features), (m.out_features, 64)]  # lora_A, lora_B
    return out


def worker(cases: list[str], repeats: int) -> None:
    from accelerate import Accelerator

    from distillkit.engine.distributed import bucketed_all_reduce, per_tensor_all_reduce

    acc = Accelerator(cpu=True)
    rank = acc.process_index
    rows = []
    for case in cases:
        gen = torch.Generator().manual_seed(rank)
        params = [torch.nn.Parameter(torch.empty(s)) for s in shapes(case)]
        originals = [torch.randn(p.shape, generator=gen) for p in params]

        def reset():
            for p, g in zip(params, originals):
                p.grad = g.clone()

        reset()
        per_tensor_all_reduce(params, acc)
        want = [p.grad.clone() for p in params]
        reset()
        bucketed_all_reduce(params)
        same = all(torch.allclose(p.grad, w, rtol=1e-6, atol=1e-7) for p, w in zip(params, want))
        times: dict[str, list[float]] = {"per-tensor": [], "bucketed": []}
        calls = {}
        for i in range(repeats + 1):
            for name, fn in (("per-tensor", lambda: per_tensor_all_reduce(params, acc)),
                             ("bucketed", lambda: bucketed_all_reduce(params))):
                reset()
                acc.wait_for_everyone()
                t0 = time.perf_counter()
                calls[name] = fn()
                dt = time.perf_counter() - t0
                if i:
                    times[name].append(dt)
        n = sum(p.numel() for p in params)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((case, len(params), n, calls["per-tensor"], calls["bucketed"], med["per-tensor"],
                     med["bucketed"], same))
        del params, originals, want
    if rank == 0:
        print(f"gradient averaging on {acc.num_processes} gloo processes (CPU), torch {torch.__version__}, "
              f"{repeats} interleaved pairs after 1 warm-up")
        print(f"{'case':8} {'tensors':>8} {'values':>12} {'collectives':>15} {'per-tensor s':>13} "
              f"{'bucketed s':>11} {'ratio':>7}  same")
        for case, k, n, c1, c2, t1, t2, same in rows:
            print(f"{case:8} {k:8d} {n:12,d} {c1:7d} -> {c2:4d} {t1:13.4f} {t2:11.4f} {t1 / t2:7.2f}  {same}")
        print("ratio = per-tensor median / bucketed median (higher: buckets faster); same = identical averages")
    acc.end_training()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--full", action="store_true", help="also the full SD1.5 UNet (3.4 GB of gradients per process)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.cases.split(","), args.repeats)
        return 0
    cases = ["tiny", "lora64"] + (["sd15"] if args.full else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), "--worker", "--cases", ",".join(cases), "--repeats", str(args.repeats)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
