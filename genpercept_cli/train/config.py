"""The training configuration: typed dataclasses read from a TOML file, with dotted command-line overrides.

    [model]   unet = "sd21/unet"   vae = "sd21/vae"   task = "depth"   timestep = "random"
    [[data.sources]]   kind = "folder"   path = "data/hypersim"   ratio = 0.9
    [optim]   lr = 3e-5   effective_batch = 32   batch_size = 8

`--set optim.lr=1e-5` replaces one value (the right-hand side is read as a TOML value, else as a string).
Every bad value is refused with one sentence naming it, before any model is loaded.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from ..errors import GenPerceptError

TRAIN_TASKS = ("depth", "disparity", "normal", "dis", "matting", "seg")
SOURCE_KINDS = ("folder", "vkitti", "hypersim")
_DEPTH_TERMS = ("pixel_mse", "ssi", "gradient")
# The image-level loss terms each task trains (train.losses.task_loss); loss.latent_mse applies to all
TASK_TERMS = {"depth": _DEPTH_TERMS, "disparity": _DEPTH_TERMS, "normal": ("angular",), "dis": ("pixel_mse",),
              "matting": ("pixel_mse",), "seg": ("pixel_mse",)}
REDUCTIONS = ("batch", "sample")  # train.losses: pooled over the micro-batch's valid pixels, or per sample
NORMAL_MASKS = ("nonzero", "length")  # train.targets: the release's training mask, or SPEC §6.2's |n| > 0.5
GRADIENT_DIRECTIONS = ("vertical", "both")  # train.losses.gradient_loss
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")  # auto: fp16 on CUDA (the release's scripts), no on the CPU
TRACKERS = ("tensorboard", "wandb")
DPT_TASKS = ("depth", "disparity")  # the DPT head predicts one channel (the release: disparity)
DPT_MULTIPLE = 32  # image sides for which the DPT head's native output has the image's size
# The release's micro-batch (its main-paper configs' max_train_batch_size; effective batch 32 for all): part of
# the objective, as every loss term pools the micro-batch's valid pixels
RELEASE_BATCH = {"depth": 8, "disparity": 4, "normal": 4, "dis": 4, "matting": 4, "seg": 4}
RELEASE_BATCH_DPT = 8  # disparity with the DPT head
NUM_TRAIN_TIMESTEPS = 1000  # SD's training schedule length: random t is drawn from [0, 1000)


class ConfigError(GenPerceptError):
    """A training configuration value that is missing, of the wrong type or out of range."""


@dataclass
class ModelConfig:
    unet: str = ""  # diffusers UNet2DConditionModel folder to start from (SD2.1 `unet/`, or a GenPercept unet_*)
    vae: str = ""  # AutoencoderKL folder (frozen; copied into every checkpoint)
    task: str = "depth"
    timestep: int | str = "random"  # "random": t ~ U[0, 1000) per sample (the released models); or a fixed t
    embedding: str = "v2"  # empty prompt: v2 (2 tokens, the v2 models) or v1 (77 tokens)
    gradient_checkpointing: bool = False
    dpt_head: bool = False  # true: U-Net features -> a fresh DPT head, trained in pixel space (depth, disparity)
    dpt_features: int = 256  # the DPT head's fusion width (the release: 256)
    lora_rank: int = 0  # > 0: train rank-r adapters on the attention projections, base U-Net frozen (train.lora)
    lora_alpha: float = 0.0  # adapter scale = alpha / rank; 0 = rank (scale 1, as GenPercept's LoRA ablation)


@dataclass
class SourceConfig:
    kind: str = "folder"  # folder: rgb/ + a label folder; vkitti, hypersim: as published (train.data)
    path: str = ""
    ratio: float = 1.0  # share of micro-batches drawn from this source (normalised over sources)
    size: list[int] = field(default_factory=list)  # [height, width] of this source's samples; [] = data.size
    depth_range: list[float] = field(default_factory=list)  # [min, max] valid depth (exclusive, the label's
    # unit); [] = the kind's, the reference's per dataset: hypersim [1e-5, 65], vkitti [1e-5, 80], folder [0, 1e8]


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    size: list[int] = field(default_factory=lambda: [480, 640])  # [height, width] every sample is resized to
    flip_p: float = 0.5  # horizontal flip probability (normals: x negated)
    depth_quantile: float = 0.02  # depth/disparity normalised between the 2% and 98% quantiles to [-1, 1]
    workers: int = 4  # threads decoding samples (0: in the training loop)
    normal_mask: str = "nonzero"  # normals valid where any component ≠ 0 as stored, 0 (still counted) where the
    # depth beside them is invalid (the release); "length": |n| > 0.5, no depth read (SPEC §6.2's eval rule)


@dataclass
class LossConfig:  # weights (0 switches a term off) and forms; defaults: the released configurations' (README)
    latent_mse: float = 0.0  # the release trains without it (its "with_latent_loss" variants: 1)
    pixel_mse: float = 1.0  # all but normals
    ssi: float = 0.5  # depth/disparity only
    gradient: float = 2.0  # depth/disparity only
    gradient_scales: int = 1
    gradient_directions: str = "vertical"  # vertical: the release's computation; both: also horizontal pairs
    angular: float = 1.0  # normals only (replaces pixel_mse there)
    reduction: str = "batch"  # batch: mean over the micro-batch's valid pixels pooled (the release); sample


@dataclass
class OptimConfig:
    lr: float = 3e-5
    warmup_steps: int = 100
    decay_steps: int = 25000  # the lr decays exponentially from warmup_steps to final_ratio x lr at this step
    final_ratio: float = 0.01
    effective_batch: int = 32  # samples per optimiser step, over all processes
    batch_size: int = 0  # samples per forward pass on one process (gradient accumulation makes up the rest);
    # 0 = the release's for the task (RELEASE_BATCH: 8 depth and DPT head, 4 the others), set by validate
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping
    adam_8bit: bool = False  # bitsandbytes' Adam8bit (CUDA; needs bitsandbytes)


@dataclass
class ValidationConfig:
    dataset: str = ""  # a `genpercept eval` dataset name, scored on every saved checkpoint; "" = none
    data_dir: str = ""
    limit: int = 20  # samples scored (eval --limit), on each saved checkpoint


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    steps: int = 30000  # optimiser steps
    seed: int = 2024
    mixed_precision: str = "auto"  # auto, no, fp16, bf16 (accelerate's autocast; `resolved_precision`)
    save_every: int = 3000
    keep_states: int = 1  # newest checkpoints that keep their optimiser state (resume needs 1); older keep weights
    log_every: int = 10
    trackers: list[str] = field(default_factory=list)  # tensorboard, wandb (when installed)
    output: str = "genpercept_run"

    def validate(self) -> TrainConfig:
        """Raise ConfigError (one sentence) for the first bad value; returns self, with optim.batch_size 0
        replaced by the release's for the task (`release_batch`)."""
        for message in _problems(self):
            raise ConfigError(message)
        self.optim.batch_size = self.optim.batch_size or release_batch(self.model)
        return self


def _problems(cfg: TrainConfig):
    """One sentence per bad value, in file order."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    if not m.unet or not m.vae:
        yield "model.unet and model.vae must name the U-Net and VAE folders to start from."
    if m.task not in TRAIN_TASKS:
        yield f"model.task must be one of {', '.join(TRAIN_TASKS)}, not {m.task!r}."
    if m.timestep != "random" and not (isinstance(m.timestep, int) and 0 <= m.timestep < NUM_TRAIN_TIMESTEPS):
        yield f"model.timestep must be \"random\" or an integer in [0, {NUM_TRAIN_TIMESTEPS}), not {m.timestep!r}."
    if m.embedding not in ("v1", "v2"):
        yield f"model.embedding must be v1 or v2, not {m.embedding!r}."
    yield from _model_problems(cfg)
    if not d.sources:
        yield "data.sources is empty: add at least one [[data.sources]] table with kind and path."
    for i, source in enumerate(d.sources):
        if source.kind not in SOURCE_KINDS:
            yield f"data.sources[{i}].kind must be one of {', '.join(SOURCE_KINDS)}, not {source.kind!r}."
        if not source.ratio > 0:
            yield f"data.sources[{i}].ratio must be positive, not {source.ratio}."
        r = source.depth_range
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
        if r and (len(r) != 2 or not numbers or not r[0] < r[1]):
            yield f"data.sources[{i}].depth_range must be [min, max] with min < max, not {r}."
    sizes = [("data.size", d.size)] + [(f"data.sources[{i}].size", s.size) for i, s in enumerate(d.sources) if s.size]
    for name, size in sizes:
        if len(size) != 2 or any(not isinstance(s, int) or s < 8 or s % 8 for s in size):
            yield f"{name} must be [height, width], multiples of 8 of at least 8 pixels, not {size}."
    if not 0 <= d.flip_p <= 1 or not 0 <= d.depth_quantile < 0.5 or d.workers < 0:
        yield "data.flip_p must be in [0, 1], data.depth_quantile in [0, 0.5) and data.workers >= 0."
    if d.normal_mask not in NORMAL_MASKS:
        yield f"data.normal_mask must be one of {', '.join(NORMAL_MASKS)}, not {d.normal_mask!r}."
    weights = [getattr(cfg.loss, f.name) for f in fields(cfg.loss) if f.type == "float"]
    if any(w < 0 for w in weights) or cfg.loss.gradient_scales < 1:
        yield "loss weights must be >= 0 and loss.gradient_scales >= 1."
    terms = ("latent_mse", *TASK_TERMS.get(m.task, ()))
    if not any(getattr(cfg.loss, name) > 0 for name in terms):
        yield f"loss: every term of the {m.task} task has weight 0 ({', '.join(terms)}): nothing would train."
    if cfg.loss.reduction not in REDUCTIONS or cfg.loss.gradient_directions not in GRADIENT_DIRECTIONS:
        yield (f"loss.reduction must be one of {', '.join(REDUCTIONS)} and loss.gradient_directions one of "
               f"{', '.join(GRADIENT_DIRECTIONS)}, not {cfg.loss.reduction!r} and {cfg.loss.gradient_directions!r}.")
    if not o.lr > 0 or o.warmup_steps < 0 or o.decay_steps < 1 or not 0 < o.final_ratio <= 1:
        yield "optim.lr must be > 0, optim.warmup_steps >= 0, optim.decay_steps >= 1, optim.final_ratio in (0, 1]."
    if o.batch_size < 0 or o.effective_batch < 1:
        yield "optim.batch_size must be at least 1 (0: the task's released size) and optim.effective_batch at least 1."
    if cfg.mixed_precision not in MIXED_PRECISION:
        yield f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, not {cfg.mixed_precision!r}."
    if min(cfg.steps, cfg.save_every, cfg.log_every, cfg.keep_states, cfg.validation.limit) < 1:
        yield "steps, save_every, log_every, keep_states and validation.limit must be at least 1."
    for name in cfg.trackers:
        if name not in TRACKERS:
            yield f"trackers may hold {', '.join(TRACKERS)}, not {name!r}."


def _model_problems(cfg: TrainConfig):
    """The DPT-head and LoRA settings' sentences."""
    m, d = cfg.model, cfg.data
    if m.lora_rank < 0 or m.lora_alpha < 0:
        yield f"model.lora_rank and model.lora_alpha must be >= 0, not {m.lora_rank} and {m.lora_alpha}."
    if not m.dpt_head:
        return
    if m.task not in DPT_TASKS:
        yield f"model.dpt_head predicts one channel: model.task must be {' or '.join(DPT_TASKS)}, not {m.task!r}."
    if cfg.loss.latent_mse > 0:
        yield "model.dpt_head has no latent output to supervise: set loss.latent_mse = 0."
    if m.dpt_features < 2 or m.dpt_features % 2:
        yield f"model.dpt_features must be an even number >= 2, not {m.dpt_features}."
    sizes = [("data.size", d.size)] + [(f"data.sources[{i}].size", s.size) for i, s in enumerate(d.sources) if s.size]
    for name, size in sizes:
        if any(isinstance(s, int) and s % DPT_MULTIPLE for s in size):
            yield f"{name} must be multiples of {DPT_MULTIPLE} with model.dpt_head (the head's output size): {size}."


def release_batch(model: ModelConfig) -> int:
    """The release's micro-batch for `model`'s task (and head): RELEASE_BATCH, RELEASE_BATCH_DPT."""
    return RELEASE_BATCH_DPT if model.dpt_head else RELEASE_BATCH[model.task]


def resolved_precision(cfg: TrainConfig, cuda: bool) -> str:
    """mixed_precision for accelerate: "auto" is fp16 on CUDA (the release's launch scripts), "no" on the CPU."""
    if cfg.mixed_precision == "auto":
        return "fp16" if cuda else "no"
    return cfg.mixed_precision


def check_world(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per process per step; the effective batch must split evenly over processes and passes."""
    o = cfg.optim
    if o.effective_batch % (world * o.batch_size):
        raise ConfigError(
            f"optim.effective_batch ({o.effective_batch}) must be a multiple of processes x optim.batch_size "
            f"({world} x {o.batch_size})."
        )
    return o.effective_batch // (world * o.batch_size)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig in TOML file `path` (None: defaults), with `section.key=value` overrides applied."""
    table = {}
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML ({exc}).") from None
    for item in overrides:
        _apply_override(table, item)
    return _build(TrainConfig, table, "").validate()


def _apply_override(table: dict, item: str) -> None:
    """`a.b.c=value` into the nested dict; value parsed as TOML, else kept as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes key=value (e.g. optim.lr=1e-5), not {item!r}.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *parents, leaf = key.strip().split(".")
    node = table
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is a value, not a section.")
    node[leaf] = value


def _build(cls, table: dict, where: str):
    """Dataclass `cls` from a TOML table, type-checked field by field."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where or 'the config'} must be a table, not {table!r}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting {where}{unknown[0]}; known: {', '.join(known)}.")
    values = {}
    for name, value in table.items():
        default = getattr(cls(), name)
        values[name] = _convert(value, default, f"{where}{name}", name == "sources")
    return cls(**values)


def _convert(value, default, where: str, is_sources: bool):
    """`value` checked against the type of the field's default (nested tables become dataclasses)."""
    if is_sources:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of tables ([[data.sources]]).")
        return [_build(SourceConfig, item, f"{where}[{i}].") for i, item in enumerate(value)]
    if is_dataclass(default):
        return _build(type(default), value, f"{where}.")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int) and where != "model.timestep":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, (str, int)) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{where} must be {_TYPE_WORDS[type(default)]}, not {value!r}.")
    return value


# A field's type as its sentence says it ("steps must be an integer", not "a int").
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", list: "a list", str: "a string"}
