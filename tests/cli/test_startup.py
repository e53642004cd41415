"""CLI start-up stays cheap: what each command imports, checked in a fresh interpreter (no timings here;
``benchmarks/cli_startup.py`` measures them), and a SIGTERM during start-up is a clean stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = ("diffusers", "transformers", "timm", "open_clip")

# Runs the CLI like the console script does, then reports the imported modules as JSON on stderr's last line.
PROBE = """
import json, sys
sys.argv = ["distillkit", *ARGS]
from distillkit.cli import main
try:
    code = main()
except SystemExit as exc:  # argparse's --help
    code = exc.code
mods = sorted(sys.modules)
print("\\nMODULES " + json.dumps({"code": code, "modules": mods}), file=sys.stderr)
"""


def imported_by(*args: str) -> tuple[int, set[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-c", PROBE.replace("ARGS", repr(list(args)))], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    line = [l for l in res.stderr.splitlines() if l.startswith("MODULES ")]
    assert line, res.stderr[-3000:]
    report = json.loads(line[-1].removeprefix("MODULES "))
    return report["code"], set(report["modules"])


def plugin_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("distillkit_") or m == "distillkit.builtin"}


def test_help_imports_neither_torch_nor_any_plugin():
    # Caught before: `sample`'s --device default asked torch for a GPU while the parser was built, so
    # `--help` paid for importing torch.
    code, modules = imported_by("--help")
    assert code == 0
    assert "torch" not in modules and not plugin_modules(modules)
    assert not {"rich", "pydantic"} & modules  # neither is needed to print the help


def test_import_distillkit_and_hookimpl_import_no_torch():
    code = ("import sys, distillkit; distillkit.hookimpl; assert 'torch' not in sys.modules, 'torch'; "
            "names = [getattr(distillkit, n) for n in distillkit.__all__]; "
            "assert 'torch' in sys.modules; print(len(names))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "21"  # every public name still resolves, lazily


@pytest.mark.parametrize("args", [("plugins",), ("validate", "recipes/add_sdxl.toml")],
                         ids=lambda a: " ".join(a))
def test_plugins_and_validate_import_no_model_library(args):
    # Caught before: registration imported diffusers and transformers (the model families) for every command.
    code, modules = imported_by(*args)
    assert code == 0
    assert plugin_modules(modules)  # the plugins were registered ...
    assert not {m.split(".")[0] for m in modules} & set(MODEL_LIBRARIES)  # ... without their heavy libraries


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: the SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(l for l in status.splitlines() if l.startswith("SigCgt:")).split()[1], 16)
    return bool(mask >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc/self/status").exists(),
                    reason="needs Linux /proc to see the handler, and a named pipe")
def test_sigterm_during_start_up_stops_with_a_message(tmp_path):
    # Caught before: the handler was installed after the engine was built, so a SIGTERM while torch was
    # importing killed the run with status 143 (-15 here) and no word.
    # The recipe is a named pipe: reading it waits for a writer, so the signal always lands during start-up
    # (importing, or waiting for the recipe), however late this process gets to send it. With a plain file
    # the run could get as far as its data check first on a loaded machine.
    recipe = tmp_path / "recipe.toml"
    os.mkfifo(recipe)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "distillkit", "run", str(recipe), "--set",
                             f"run.output_dir={out}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 60
        while not _handles_sigterm(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "the handler was never installed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # still waiting for its recipe: give it one; it must stop all the same
            recipe.write_text((ROOT / "recipes" / "tiny_cpu.toml").read_text())
            _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "SIGTERM: stopping before training starts" in err and "nothing was trained" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_the_signal_handler_imports_nothing():
    # Caught in CI: the handler imported the rich console to colour its line; landing halfway through an
    # import, that import failed, and the ImportError was swallowed by the code it interrupted.
    import builtins

    from distillkit.cli.run import GracefulStop, StopBeforeTraining

    imported, real_import = [], builtins.__import__
    stop = GracefulStop()
    builtins.__import__ = lambda name, *a, **k: imported.append(name) or real_import(name, *a, **k)
    try:
        stop(signal.SIGTERM, None)
    except StopBeforeTraining:
        pass
    finally:
        builtins.__import__ = real_import
    assert imported == []
    assert stop.requested == "SIGTERM"


def test_a_stop_swallowed_during_start_up_still_stops_before_set_up(monkeypatch, capsys):
    # A library's bare `except:` may catch StopBeforeTraining; run() then sees the request after reading the
    # recipe and stops before set-up instead of training.
    import argparse

    from distillkit.cli import run as run_cli
    from distillkit.engine import Engine

    class Unset:
        global_step = 0

        def setup(self):
            raise AssertionError("set-up ran although a stop was requested")

    def from_recipe(*a, **k):
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException:  # what a library's bare `except:` does
            pass
        return Unset()

    monkeypatch.setattr(Engine, "from_recipe", from_recipe)
    args = argparse.Namespace(recipe="r.toml", overrides=[], allow_changes=False)
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli.run(args) == 130
    err = capsys.readouterr().err
    assert "SIGTERM: stopping before training starts" in err and "nothing was trained" in err
    assert signal.getsignal(signal.SIGTERM) is before  # put back as it was
