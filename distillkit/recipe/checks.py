"""Checks that need no model but more than the schema: the model folder's configs, the machine, the run folder.

``distillkit validate`` should find everything that would otherwise fail minutes into a run (a resolution
the UNet cannot halve, a timestep past the schedule, ``device = "cuda"`` without a GPU, fp16 on a CPU, an
output folder that cannot be written), and nothing here loads a network or creates a file. Checks on
this machine and this file system (``environment``) can be switched off for a recipe read back from
another machine's run folder.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any, Optional

from distillkit.recipe.problems import Problem, relative_note
from distillkit.recipe.schema import Recipe, RunConfig, TrainConfig

if typing.TYPE_CHECKING:  # pragma: no cover
    from distillkit.models.backbone import Backbone

#: what people write for run.resume when they mean one of the two keywords
_RESUME_WORDS = {"latest": "auto", "last": "auto", "newest": "auto", "resume": "auto", "continue": "auto",
                 "true": "auto", "yes": "auto", "on": "auto", "no": "never", "none": "never", "false": "never",
                 "off": "never", "fresh": "never", "new": "never"}
_DEVICE_EXAMPLES = ("cpu", "cuda", "mps")
DEFAULT_TRAIN_TIMESTEPS = 1000


# -- the model folder --------------------------------------------------------------------------------
def _read_config(path: Path) -> Optional[dict[str, Any]]:
    """A config file's JSON object, or None when absent or unreadable (loading the model reports that)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _depth(config: Optional[dict]) -> Optional[int]:
    blocks = (config or {}).get("block_out_channels")
    return len(blocks) if isinstance(blocks, list) and blocks else None


def diffusers_folder_problems(recipe: Recipe, *, spatial_factor: int, has_vae: bool, family: str) -> list[Problem]:
    """``data.resolution`` against the VAE's and UNet's downsampling, and ``student.timesteps`` against the
    schedule's length, read from ``model.pretrained``'s ``vae/config.json``, ``unet/config.json`` and
    ``scheduler/scheduler_config.json`` when it is a local folder. For a hub id only the timesteps are
    checked, against the usual 1000-step schedule."""
    source = recipe.model.pretrained
    folder = Path(source)
    local = folder.is_dir()
    problems: list[Problem] = []
    schedule = _read_config(folder / "scheduler" / "scheduler_config.json") if local else None
    steps = (schedule or {}).get("num_train_timesteps")
    length = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else DEFAULT_TRAIN_TIMESTEPS
    beyond = [t for t in recipe.student.timesteps if t >= length]
    if beyond:
        where = (f"from {folder / 'scheduler' / 'scheduler_config.json'}{relative_note(source)}" if schedule
                 else f"{length} assumed: model.pretrained is not a local folder with a scheduler config")
        problems.append(Problem("student.timesteps", f"{beyond} past the end of the teacher's {length}-step "
                                                     f"training schedule (valid: 0..{length - 1}; {where}); the "
                                                     f"noisiest timestep is {length - 1}"))
    unet_depth = _depth(_read_config(folder / "unet" / "config.json")) if local else None
    if unet_depth is None:
        return problems
    vae_depth = _depth(_read_config(folder / "vae" / "config.json")) if has_vae else None
    vae_factor = 2 ** (vae_depth - 1) if vae_depth else spatial_factor
    factor = vae_factor * 2 ** (unet_depth - 1)
    res = recipe.data.resolution
    if res % factor:
        ok = max(factor, round(res / factor) * factor)
        n = unet_depth - 1
        vae = f"{vae_factor}x in its VAE and " if vae_factor > 1 else ""
        problems.append(Problem("data.resolution", f"{res} is not a multiple of {factor}: the {family} model at "
                                                   f"{source}{relative_note(source)} shrinks images {vae}"
                                                   f"{2 ** n}x in its UNet's {n} downsampling step"
                                                   f"{'s' if n != 1 else ''}; use e.g. {ok}"))
    return problems


def _plugin_check(where: str, whose: str, check) -> list[Problem]:
    """The problems ``check()`` returns; a check that fails is reported at ``where`` as a bug in ``whose``
    plugin rather than as a traceback, so that it does not hide the recipe's other problems."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - any failure of plugin code is reported the same way
        return [Problem(where, f"{whose} recipe check failed ({type(exc).__name__}: {exc}); this is a bug in "
                               f"its plugin")]


def model_problems(backbone_cls: type["Backbone"], recipe: Recipe) -> list[Problem]:
    """What the model family finds in the recipe (``Backbone.recipe_problems``)."""
    return _plugin_check("model.family", f"the {backbone_cls.family!r} family's",
                         lambda: [Problem.of(p) for p in backbone_cls.recipe_problems(recipe)])


def critic_problems(j: int, name: str, critic_cls, config, recipe: Recipe) -> list[Problem]:
    """What the ``critics[j]`` entry finds in the rest of the recipe (``Critic.recipe_problems``), its
    fields named in full."""
    return _plugin_check(f"critics[{j}].name", f"the {name!r} critic's",
                         lambda: [Problem(f"critics[{j}].params.{field}", message)
                                  for field, message in critic_cls.recipe_problems(config, recipe)])


# -- the machine -------------------------------------------------------------------------------------
def device_problems(train: TrainConfig, environment: bool = True) -> list[Problem]:
    """``train.device`` must name a device this machine has; fp16 needs a GPU (on a CPU, accelerate would
    silently train in fp32)."""
    import torch

    problems: list[Problem] = []
    device = None
    if train.device is not None:
        try:
            device = torch.device(train.device)
        except (RuntimeError, ValueError):
            close = difflib.get_close_matches(train.device.lower(), _DEVICE_EXAMPLES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return [Problem("train.device", f"{train.device!r} is not a device: use 'cpu' or 'cuda', or leave "
                                            f"train.device out to let accelerate choose{hint}")]
    cuda = torch.cuda.is_available() if environment else None
    if device is not None and device.type == "cuda":
        if cuda is False:
            problems.append(Problem("train.device", f"{train.device!r}, but this machine has no CUDA GPU "
                                                    f"(torch.cuda.is_available() is false): use 'cpu', or leave "
                                                    f"train.device out"))
        elif device.index is not None:
            problems.append(Problem("train.device", f"{train.device!r}: a GPU index is not chosen here; use 'cuda' "
                                                    f"and pick the GPU with CUDA_VISIBLE_DEVICES={device.index}"))
    if not environment:
        return problems
    mps = getattr(torch.backends, "mps", None)
    if device is not None and device.type == "mps" and not (mps and mps.is_available()):
        problems.append(Problem("train.device", "'mps', but this machine has no Apple GPU: use 'cpu'"))
    on_cpu = device.type == "cpu" if device is not None else not (cuda or (mps and mps.is_available()))
    if train.mixed_precision == "fp16" and on_cpu:
        why = "train.device = 'cpu'" if device is not None else "no GPU was found"
        problems.append(Problem("train.mixed_precision", f"'fp16' needs a GPU, and this run trains on the CPU "
                                                         f"({why}), where it would silently run in fp32: use "
                                                         f"'bf16' or 'no'"))
    return problems


# -- the run folder ----------------------------------------------------------------------------------
def resume_problems(run: RunConfig, environment: bool = True) -> list[Problem]:
    """``run.resume`` is 'auto', 'never' or a checkpoint path; a bare word that is no path was meant as a
    keyword ('latest' -> 'auto')."""
    value = run.resume
    if value in ("auto", "never") or Path(value).exists():
        return []
    note = relative_note(value)
    if not any(sep in value for sep in ("/", "\\")) and "." not in value:
        meant = _RESUME_WORDS.get(value.lower()) or next(
            iter(difflib.get_close_matches(value.lower(), ["auto", "never"], n=1, cutoff=0.5)), None)
        meaning = {"auto": "resume from the newest checkpoint in the run folder", "never": "always start afresh"}
        hint = (f"; did you mean {meant!r} ({meaning[meant]})?" if meant
                else "; use 'auto' (resume from the newest checkpoint), 'never', or a checkpoint folder")
        return [Problem("run.resume", f"{value!r} is neither 'auto' nor 'never', so it would be a checkpoint path, "
                                      f"and no such path exists{note}{hint}")]
    if environment:
        return [Problem("run.resume", f"checkpoint {value!r} does not exist{note}; give a checkpoints/step-* "
                                      f"folder, or 'auto' / 'never'")]
    return []


def output_dir_problems(run: RunConfig) -> list[Problem]:
    """The run folder must be a folder this process can create or write into; nothing is created here."""
    raw = run.output_dir.format(name=run.name)  # the schema has checked the placeholders
    path = Path(raw)
    note = relative_note(raw)
    fix = "; choose another run.output_dir (or run.name)"
    if path.exists() and not path.is_dir():
        return [Problem("run.output_dir", f"{raw!r} is an existing file, not a folder{note}{fix}")]
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        return [Problem("run.output_dir", f"{raw!r} cannot be created: {str(existing)!r} is a file{note}{fix}")]
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        what = "the run cannot write into it" if existing == path else f"{raw!r} cannot be created in it"
        return [Problem("run.output_dir", f"{str(existing)!r} is not writable, so {what}{note}{fix}")]
    return []


def machine_and_folder_problems(recipe: Recipe, environment: bool = True) -> list[Problem]:
    """Every check of this module that needs no registry."""
    problems = device_problems(recipe.train, environment) + resume_problems(recipe.run, environment)
    if environment:
        problems += output_dir_problems(recipe.run)
    return problems
