"""The recipe: a TOML file validated by pydantic before any model loads.

Stage 1 (this module) checks structure and types with ``extra="forbid"`` everywhere, so a misspelt key
is an error rather than a silently ignored default. Stage 2 (:mod:`distillkit.recipe.resolve`) resolves
loss/critic/family names in the plugin registry and validates each ``params`` table against that
plugin's own pydantic ``Config``. Both stages report every problem at once.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distillkit.recipe.problems import Problem, RecipeProblems


class Section(BaseModel):
    """Strict: ``lr = "1e-4"`` is an error, not a silently converted string (an int is still a float), and
    nan/inf are refused everywhere: they would only surface as non-finite losses after training began."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RunConfig(Section):
    name: str = "distill"
    seed: int = 0
    output_dir: str = "runs/{name}"
    max_steps: int = Field(1000, ge=1)
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: int = Field(500, ge=0, description="0 disables periodic sample grids")
    resume: Union[Literal["auto", "never"], str] = "auto"
    max_nonfinite_steps: int = Field(5, ge=1, description="abort after this many consecutive non-finite steps")
    progress: bool = True
    # Budgets that compare across methods updating at different rates (DMD2 updates the student one step in
    # five): the run also stops when any of these is reached (0 = no limit), whichever comes first.
    max_time: float = Field(0.0, ge=0, description="stop after this much training wall time in seconds (0: no limit)")
    max_student_updates: int = Field(0, ge=0, description="stop after this many student updates (0: no limit)")
    max_images: int = Field(0, ge=0, description="stop after this many training examples seen, all processes "
                                                 "together (0: no limit)")

    @field_validator("output_dir")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        fix = "the only placeholder is {name}; write {{ or }} for a literal brace"
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError:
            raise ValueError(f"a lone '{{' or '}}': {fix}") from None
        unknown = [f for f in fields if f != "name"]
        if unknown:
            raise ValueError(f"unknown placeholder {'{' + unknown[0] + '}'!r}: {fix}")
        try:
            v.format(name="x")
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"cannot be filled in ({exc}): {fix}") from None
        return v


class ModelConfig(Section):
    family: str = Field(..., description="model family: sd15, sdxl, pixel, or one a plugin registers",
                        examples=["sd15"])
    pretrained: str = Field(..., description="hub id or local diffusers folder of the teacher (a relative path is "
                                             "taken from the working directory)", examples=["runs/fixtures/sd15"])
    revision: Optional[str] = None
    variant: Optional[str] = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    teacher_offload: bool = Field(False, description="keep the frozen teacher UNet's weights in CPU memory and move "
                                                     "them to the accelerator one block at a time per call "
                                                     "(saves its memory; costs host-device traffic)")


class LoraConfig(Section):
    rank: int = Field(16, ge=1)
    alpha: Optional[float] = None
    target_modules: list[str] = ["to_k", "to_q", "to_v", "to_out.0"]


class EMAConfig(Section):
    decay: float = Field(0.999, gt=0, lt=1)
    rampup: float = Field(0.0, ge=0, le=1, description="EDM's ema_rampup_ratio: the half-life is at most this "
                                                       "share of the updates so far (0.05 in EDM and SiD's "
                                                       "code); 0 = the fixed decay from the first update")
    start_step: int = Field(0, ge=0)
    offload: bool = Field(False, description="keep the EMA copy in CPU memory (one device-to-host copy per update)")


class OptimConfig(Section):
    """Adam(W) settings. ``weight_decay`` > 0 selects AdamW."""

    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 disables clipping (TOML has no null)")
    warmup_steps: int = Field(0, ge=0)
    eight_bit: bool = Field(False, description="8-bit Adam(W) states from bitsandbytes (pip install "
                                               "'distillkit[bnb]'): a quarter of Adam's state memory")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_list(cls, v):
        return tuple(v) if isinstance(v, list) else v  # TOML has lists only; strict mode wants the tuple

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class StudentConfig(Section):
    timesteps: list[int] = Field([999, 749, 499, 249], min_length=1,
                                 description="the student's own timesteps, noisiest first")
    init: Literal["teacher", "random"] = "teacher"
    input: Literal["real", "noise"] = Field("real", description="'real': noised real images (ADD); "
                                                                "'noise': data-free from noise (SiD, DMD2)")
    first_input: Literal["noise", "sigma_noise"] = "noise"
    renoise: Literal["fresh", "fixed"] = "fresh"
    zero_terminal_snr: bool = True
    lora: Optional[LoraConfig] = None
    ema: Optional[EMAConfig] = None
    optim: OptimConfig = OptimConfig()

    @field_validator("timesteps")
    @classmethod
    def _decreasing(cls, v):
        if any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError(f"must be strictly decreasing (noisiest first), e.g. [999, 749, 499, 249]; got {v}")
        if any(t < 0 for t in v):
            raise ValueError("timesteps must be >= 0")
        return v


class TeacherConfig(Section):
    guidance_scale: float = Field(1.0, description="CFG scale, diffusers convention (1 = conditional only)")


class DataConfig(Section):
    prompts: Optional[Union[str, list[str]]] = Field(
        None, description="a text file with one prompt per line, or an inline list")
    images: Optional[str] = Field(None, description="image folder with metadata.jsonl (file_name, text)")
    dataset: Optional[str] = Field(None, description="Hugging Face datasets name or local path")
    dataset_split: str = "train"
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = Field(512, ge=8)
    center_crop: bool = True
    random_flip: bool = False
    batch_size: int = Field(4, ge=1)
    strict: bool = Field(False, description="fail on an unreadable image instead of skipping and counting it")
    cache_text_embeddings: bool = Field(False, description="encode every prompt/caption once at start, keep the "
                                                           "embeddings in CPU memory and move the text encoders off "
                                                           "the accelerator")

    @model_validator(mode="after")
    def _one_source(self):
        sources = [s for s in ("images", "dataset") if getattr(self, s)]
        if len(sources) > 1:
            raise ValueError("give either data.images or data.dataset, not both")
        if not sources and not self.prompts:
            raise ValueError("no training data: set data.prompts (data-free) or data.images / data.dataset")
        return self

    @property
    def has_images(self) -> bool:
        return bool(self.images or self.dataset)


class TrainConfig(Section):
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = Field(1, ge=1)
    generator_every: int = Field(1, ge=1, description="update the student every N-th step (DMD2: 5 or 10)")
    critic_first: bool = True
    generator_sample: Literal["shared", "fresh"] = Field(
        "shared", description="'shared': the generator phase reuses the critic phase's student sample; 'fresh': "
                              "it draws a new one (SiD's code)")
    device: Optional[str] = Field(None, description="force a device (e.g. 'cpu'); default: accelerate's choice")
    gradient_checkpointing: bool = Field(False, description="recompute the student's and critics' UNet "
                                                            "activations in the backward pass (less memory, "
                                                            "~30 % more compute)")
    attention: Literal["default", "sdpa", "eager"] = Field(
        "default", description="attention of every UNet/VAE: 'sdpa' (fused, no attention matrix kept), 'eager' "
                               "(the classic one), 'default' (as the model was loaded)")
    compile: bool = Field(False, description="torch.compile the UNets (slow first steps, faster later ones)")
    sharding: Literal["none", "zero2", "zero3"] = Field(
        "none", description="shard the full-copy trained UNets over the processes (FSDP2, one unit per UNet block): "
                            "'zero3' re-shards weights after each forward, 'zero2' keeps them until the backward; "
                            "an accelerate FSDP/DeepSpeed config file selects the same")


class CriticEntry(Section):
    name: str = Field(..., min_length=1, description="qualified critic type, e.g. add.discriminator",
                      examples=["add.discriminator"])
    id: Optional[str] = Field(None, description="instance id losses refer to; default: the type's short name")
    enabled: bool = Field(True, description="false drops the entry; a critic whose every loss is disabled is "
                                            "dropped too")
    updates_per_step: int = Field(1, ge=1)
    optim: OptimConfig = OptimConfig()
    params: dict[str, Any] = {}

    @property
    def instance_id(self) -> str:
        return self.id or self.name.rsplit(".", 1)[-1]


class WeightSchedule(Section):
    """Linear ramp of a loss weight from ``start`` (at step ``from_step``) to ``end`` (at ``to_step``)."""

    start: float = Field(..., examples=[0.0])
    end: float = Field(..., examples=[1.0])
    from_step: int = Field(0, ge=0)
    to_step: int = Field(..., ge=1, examples=[1000])

    @model_validator(mode="after")
    def _order(self):
        if self.to_step <= self.from_step:
            raise ValueError("to_step must be greater than from_step")
        return self

    def at(self, step: int) -> float:
        if step <= self.from_step:
            return self.start
        if step >= self.to_step:
            return self.end
        f = (step - self.from_step) / (self.to_step - self.from_step)
        return self.start + f * (self.end - self.start)


class LossEntry(Section):
    name: str = Field(..., min_length=1, description="qualified loss name, e.g. add.adversarial",
                      examples=["core.regression"])
    weight: Union[float, WeightSchedule] = Field(1.0, description="weight of the loss in the generator phase")
    critic_weight: Union[float, WeightSchedule] = Field(
        1.0, description="weight of the loss's critic term in the critic phase")
    critic: Optional[str] = Field(None, description="critic instance id for a loss with a single critic role; "
                                                    "default: the only critic of the right type")
    critics: dict[str, str] = Field({}, description="critic role -> critic instance id, for a loss with several "
                                                    "critic roles; each default: the only critic of that role's type")
    enabled: bool = Field(True, description="false drops the entry (a one-key loss ablation); its name and params "
                                            "are still checked")
    params: dict[str, Any] = {}

    def weight_at(self, step: int) -> float:
        """Generator-phase weight at ``step``."""
        return _weight_at(self.weight, step)

    def critic_weight_at(self, step: int) -> float:
        """Critic-phase weight at ``step``."""
        return _weight_at(self.critic_weight, step)


def _weight_at(weight: "float | WeightSchedule", step: int) -> float:
    return float(weight) if isinstance(weight, (int, float)) else weight.at(step)


class SampleConfig(Section):
    prompts: list[str] = Field(["a photo of a cat", "a watercolor landscape", "a red sports car", "a bowl of fruit"],
                               min_length=1)
    steps: Optional[list[int]] = Field(None, description="default: 1 and all of the student's timesteps")
    seed: int = 1234
    use_ema: bool = True


class LogConfig(Section):
    """Where training metrics go besides ``metrics.jsonl`` (always written) and ``metrics.png``."""

    report_to: list[Literal["tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive",
                            "swanlab"]] = Field(
        [], description="experiment trackers that receive every logged step, through accelerate's trackers "
                        "(as diffusers' --report_to), e.g. [\"tensorboard\"]; each needs its own package")
    project: Optional[str] = Field(None, min_length=1, description="the trackers' project name (W&B project, "
                                                                   "TensorBoard subfolder); default: run.name")
    logging_dir: str = Field("logs", min_length=1, description="where file-based trackers (TensorBoard) write, "
                                                               "relative to the run folder")


class Recipe(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = Field(..., examples=[{"family": "sd15", "pretrained": "runs/fixtures/sd15"}])
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    data: DataConfig = Field(..., examples=[{"images": "runs/fixtures/shapes"}])
    train: TrainConfig = TrainConfig()
    critics: list[CriticEntry] = []
    losses: list[LossEntry] = Field(..., min_length=1, examples=[{"name": "core.regression"}])
    sample: SampleConfig = SampleConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        """Checks across sections (all reported together, as structured problems). Whether each loss's
        critics exist is checked where the loss's critic roles are known: in name resolution."""
        problems = []
        if self.student.input == "real" and not self.data.has_images:
            problems.append(Problem("student.input", "'real' needs images: set data.images or data.dataset, "
                                                     "or use student.input = 'noise' for data-free training"))
        first: dict[str, int] = {}
        for j, c in enumerate(self.critics):
            cid = c.instance_id
            if cid in first:
                where = f"critics[{j}].id" if c.id else f"critics[{j}]"
                problems.append(Problem(where, f"id {cid!r} is already used by critics[{first[cid]}]: give each "
                                               f"[[critics]] entry a distinct id, e.g. id = \"{cid}_2\""))
            first.setdefault(cid, j)
        if self.losses and not any(loss.enabled for loss in self.losses):
            problems.append(Problem("losses", "every entry has enabled = false, so nothing would train: "
                                              "enable at least one"))
        n = len(self.student.timesteps)
        if self.sample.steps is None:
            self.sample.steps = sorted({1, n})
        bad = [s for s in self.sample.steps if s > n or s < 1]
        if bad:
            problems.append(Problem("sample.steps", f"{bad} out of range: the student has {n} timesteps "
                                                    f"(student.timesteps), so sampling takes 1 to {n} steps"))
        if problems:
            raise RecipeProblems(problems)
        return self

    def output_path(self) -> Path:
        return Path(self.run.output_dir.format(name=self.run.name))
