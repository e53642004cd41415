"""How long does the ``distillkit`` command take to start, compared with importing torch?

Every command is a fresh process, so its start-up is paid on each call: ``--help`` should be instant
(it needs neither torch nor any plugin), and ``validate``/``plugins`` (which need torch, for the
plugins' base classes, but no model library) should cost little more than ``import torch`` itself.
Targets (issue tracker): ``--help`` under 0.5 s; ``validate`` and ``plugins`` within 1.5x of
``python -c "import torch"``.

Each command runs as the user runs it (the installed ``distillkit`` script, a subprocess, output
discarded), ``--repeats`` times, interleaved (torch, help, plugins, validate, torch, help, ...) so the
load of a shared machine hits all of them alike; the table gives the median wall time of each, its
range, and the ratio of medians to the torch import, then the same for CPU time (user + sys), which
other jobs on the machine inflate less. A last pass, untimed, lists which heavy libraries
each command imported, so a regression shows its cause.

    HF_HUB_OFFLINE=1 python benchmarks/cli_startup.py
    HF_HUB_OFFLINE=1 python benchmarks/cli_startup.py --repeats 9 --recipe recipes/add_sd15.toml
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "timm", "open_clip", "peft", "accelerate")

#: prints, at exit, which of HEAVY the command imported (and whether any plugin module was imported)
_PROBE = """
import atexit, sys
def _report():
    heavy = [m for m in {heavy!r} if m in sys.modules]
    plugins = sorted(m for m in sys.modules if m.startswith("distillkit_") or m == "distillkit.builtin")
    print("PROBE", ",".join(heavy) or "-", ",".join(plugins) or "-", file=sys.__stderr__)
atexit.register(_report)
sys.argv = ["distillkit", *{args!r}]
from distillkit.cli import main
raise SystemExit(main())
"""


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _script() -> str:
    found = Path(sys.executable).parent / "distillkit"
    return str(found) if found.exists() else (shutil.which("distillkit") or "")


def commands(recipe: str) -> dict[str, list[str]]:
    exe = _script()
    if not exe:
        raise SystemExit("no distillkit script next to this Python or on PATH: pip install -e . first")
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "distillkit --help": [exe, "--help"],
        "distillkit plugins": [exe, "plugins"],
        f"distillkit validate {recipe}": [exe, "validate", recipe],
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; CPU time is less inflated than wall time on a busy machine."""
    cpu, start = _cpu(), time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stderr[-2000:]}")
    return elapsed, _cpu() - cpu


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def probe(args: list[str]) -> tuple[str, str]:
    """(heavy libraries imported, plugin modules imported) by ``distillkit *args``."""
    code = _PROBE.format(heavy=HEAVY, args=args)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    line = next((l for l in res.stderr.splitlines() if l.startswith("PROBE ")), "PROBE ? ?")
    _, heavy, plugins = line.split(" ", 2)
    return heavy, plugins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--recipe", default="recipes/add_sdxl.toml", help="the recipe validate checks")
    args = parser.parse_args()

    cmds = commands(args.recipe)
    load_before = _load()
    for cmd in cmds.values():  # warm the file-system cache once; not timed
        _time(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            wall, used = _time(cmd)
            times[name].append(wall)
            cpu[name].append(used)

    import torch  # only for the versions line, after all timing

    print(f"CLI start-up: {args.repeats} interleaved runs each after one warm-up; {platform.node() or '?'}: "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, torch {torch.__version__}; 1-min load average {load_before} before, "
          f"{_load()} after")
    base = statistics.median(times['python -c "import torch"'])
    cpu_base = statistics.median(cpu['python -c "import torch"'])
    width = max(len(n) for n in cmds)
    print(f"{'command':<{width}}  wall s (median, min-max)  x torch   CPU s  x torch")
    print("-" * (width + 56))
    for name, values in times.items():
        med, used = statistics.median(values), statistics.median(cpu[name])
        print(f"{name:<{width}}  {med:6.2f}  ({min(values):5.2f}-{max(values):5.2f})   {med / base:6.2f}   "
              f"{used:5.2f}  {used / cpu_base:6.2f}")
    print("targets: --help < 0.5 s; plugins and validate <= 1.5 x torch (wall). CPU s = user + sys of the "
          "process, which a busy machine inflates less than wall time")
    print("\nimported by each command (untimed probe):")
    for name, cmd in list(cmds.items())[1:]:
        heavy, plugins = probe(cmd[1:])
        print(f"  {name:<{width}}  libraries: {heavy}; plugin modules: {plugins}")


if __name__ == "__main__":
    main()
