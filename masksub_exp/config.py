"""Structured configs for the engine's own groups.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/train.yaml`, so a
misspelt key or a value of the wrong type fails while Hydra composes. Range checks that OmegaConf
cannot express (a ratio in [0, 1), a positive lr, ...) live in `__post_init__` and run in
`to_settings`, the first thing `train()` does, before anything is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is accepted."""


def _check(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: expected {accepted}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, "one of " + ", ".join(choices))


@dataclass
class ModelConfig:
    library: str = "timm"  # timm | transformers
    name: str = "vit_tiny_patch16_224"  # a timm model name, or a transformers class (BertForSequenceClassification)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    # rates reach the model as written, 0.0 included; null keeps the architecture's own default
    drop_path_rate: float | None = None
    drop_rate: float | None = None
    checkpoint: str | None = None  # fine-tune from local weights (a file for timm, a folder for transformers)
    # globals (module.Name) a weights file may load beyond the allowlist of masksub_exp/safe_load.py: only for
    # files you trust, since a pickle's globals can run code; a refused file's message names what to list here
    trust_checkpoint_globals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("model.library", self.library, ("timm", "transformers"))
        # whether model.checkpoint exists is checked when the model is built, not here: a two-stage sweep
        # submits the fine-tune before the pretraining run has written its checkpoint
        for key in ("drop_path_rate", "drop_rate"):
            value = getattr(self, key)
            _check(value is None or 0.0 <= value < 1.0, f"model.{key}", value, "null or [0, 1)")


DATASETS = ("fashion_mnist", "imagefolder", "synthetic", "synthetic_text", "text")


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str | None = None
    num_classes: int = 10
    in_chans: int = 1
    img_size: int = 28
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    num_workers: int = 0
    pin_memory: bool = True
    on_bad_image: str = "error"  # error: stop with the file's path | skip: log, count, use the next sample
    train_limit: int | None = None  # use only N training samples (quick runs)
    eval_limit: int | None = None  # text: evaluate on a random subset of N samples
    # N samples (or a fraction in (0, 1)) of the training split leave training and become the eval set;
    # null/0: evaluate on the test split. Which ones is fixed by holdout_seed alone (data/holdout.py)
    holdout: float | None = None
    holdout_seed: int = 0
    synthetic_train_size: int = 256
    synthetic_val_size: int = 64
    seq_len: int = 32  # text: tokens per sequence, padding included
    vocab_size: int = 100  # synthetic_text only
    # imagefolder training input: torch (PIL decode in DataLoader workers) | dali (NVIDIA DALI: GPU JPEG decoding
    # and augmentation on CUDA, its CPU operators otherwise; pip install '.[dali]')
    backend: str = "torch"
    # in-memory small images (fashion_mnist): augment whole batches with vectorised ops, each sample still by its
    # own seed (data/batched.py); false: the per-sample transform. Same distributions, other draws.
    batch_augment: bool = False
    # torch backend: decode a training JPEG at 1/2, 1/4 or 1/8 scale (PIL draft) when the sampled crop still has
    # at least the output resolution at that scale; false decodes every file in full
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        _choice("data.name", self.name, DATASETS)
        _check(self.num_classes >= 2, "data.num_classes", self.num_classes, "an integer >= 2")
        _check(self.img_size > 0, "data.img_size", self.img_size, "a positive integer")
        _check(len(self.mean) == len(self.std) == self.in_chans, "data.mean/data.std",
               (self.mean, self.std), f"{self.in_chans} values each (data.in_chans)")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _choice("data.on_bad_image", self.on_bad_image, ("error", "skip"))
        _check(self.holdout is None or self.holdout == 0 or 0 < self.holdout < 1
               or (self.holdout >= 1 and float(self.holdout).is_integer()), "data.holdout", self.holdout,
               "null or 0 (off), a fraction in (0, 1), or a whole number of samples")
        _choice("data.backend", self.backend, ("torch", "dali"))
        _check(self.backend == "torch" or self.name == "imagefolder", "data.backend", self.backend,
               "'torch' for data.name=" + self.name + " (dali reads imagefolder JPEGs only)")
        _check(self.backend == "torch" or self.on_bad_image == "error", "data.on_bad_image", self.on_bad_image,
               "'error' with data.backend=dali (DALI cannot skip a file inside a batch)")
        _check(self.backend == "torch" or not self.jpeg_draft, "data.jpeg_draft", self.jpeg_draft,
               "false with data.backend=dali (it decodes on its own)")
        if self.name == "imagefolder":
            _check(bool(self.root), "data.root", self.root, "a folder with train/ and val/ class folders")
        if self.name == "text":
            _check(bool(self.root), "data.root", self.root, "'tweets' or a folder of train/dev tables")
        if self.root and self.name == "text" and self.root != "tweets" and not os.path.isdir(self.root):
            raise ConfigError(f"data.root={self.root!r}: expected 'tweets' or a folder of train/dev tables")
        if self.root and self.name in ("fashion_mnist", "imagefolder") and not os.path.isdir(self.root):
            raise ConfigError(f"data.root={self.root!r} does not exist (data.name={self.name})")


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # any timm optimizer name (adamw, lamb, sgd, ...)
    lr: float = 1e-3
    lr_base_batch: int | None = None  # if set, lr is scaled by global_batch / lr_base_batch
    weight_decay: float = 0.05
    layer_decay: float | None = None
    betas: list[float] | None = None
    eps: float | None = None
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check(self.lr > 0, "recipe.optimizer.lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "recipe.optimizer.weight_decay", self.weight_decay, ">= 0")
        _check(self.lr_base_batch is None or self.lr_base_batch > 0, "recipe.optimizer.lr_base_batch",
               self.lr_base_batch, "null or a positive integer")
        _check(self.layer_decay is None or 0 < self.layer_decay <= 1, "recipe.optimizer.layer_decay",
               self.layer_decay, "null or (0, 1]")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6

    def __post_init__(self) -> None:
        _choice("recipe.schedule.name", self.name, ("cosine", "linear", "constant"))
        _check(self.warmup_epochs >= 0, "recipe.schedule.warmup_epochs", self.warmup_epochs, ">= 0")


@dataclass
class AugConfig:
    # small-image pipeline (Fashion-MNIST): random shift by padding + crop, horizontal flip
    random_crop_pad: int = 0
    hflip: float = 0.5
    # timm create_transform pipeline (ImageFolder)
    auto_augment: str | None = None  # '3a' (DeiT-III 3-Augment), 'rand-m9-mstd0.5-inc1', ...
    color_jitter: float | None = None
    reprob: float = 0.0
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # eval crop
    # batch-level mixing and targets
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.0
    repeated_aug: int = 0  # >1: timm's RepeatAugSampler with this many repeats (DeiT-III, RSB use 3)

    def __post_init__(self) -> None:
        for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, key)
            _check(0.0 <= value <= 1.0, f"recipe.aug.{key}", value, "[0, 1]")
        _check(0.0 <= self.label_smoothing < 1.0, "recipe.aug.label_smoothing", self.label_smoothing, "[0, 1)")
        _check(self.mixup >= 0 and self.cutmix >= 0, "recipe.aug.mixup/cutmix", (self.mixup, self.cutmix), ">= 0")


@dataclass
class LossConfig:
    name: str = "ce"  # ce (softmax family) | bce (sigmoid family)
    bce_target_thresh: float | None = None  # DeiT-III binarises mixed targets with 0.0

    def __post_init__(self) -> None:
        _choice("recipe.loss.name", self.name, ("ce", "bce"))


@dataclass
class RecipeConfig:
    name: str = "demo"
    epochs: int = 5
    global_batch: int | None = None  # the paper's global batch; kept on any number of processes
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    clip_grad: float | None = None
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "recipe.epochs", self.epochs, "a positive integer")
        _check(self.global_batch is None or self.global_batch > 0, "recipe.global_batch", self.global_batch,
               "null or a positive integer")
        _check(self.clip_grad is None or self.clip_grad > 0, "recipe.clip_grad", self.clip_grad, "null or > 0")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "recipe.ema_decay", self.ema_decay,
               "null or (0, 1)")


MASKSUB_MODES = ("off", "mask", "droppath", "dropout")


@dataclass
class MaskSubConfig:
    mode: str = "mask"
    ratio: float = 0.5  # the masked fraction (mask), or the drop probability (droppath, dropout)
    unit_px: int = 32  # Swin / CNN masking unit in pixels (the paper's 32x32 blocks)

    def __post_init__(self) -> None:
        _choice("masksub.mode", self.mode, MASKSUB_MODES)
        _check(0.0 <= self.ratio < 1.0, "masksub.ratio", self.ratio, "a number in [0, 1)")
        _check(self.unit_px > 0, "masksub.unit_px", self.unit_px, "a positive number of pixels")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 5
    max_steps: int | None = None  # a cap on optimizer steps, for smoke runs
    batch_size: int | None = 64  # per process; null: recipe.global_batch / number of processes
    accum_steps: int = 1
    # auto: bf16 autocast with TF32 for what stays fp32 on CUDA, fp32 on the CPU | fp32 (TF32 off) | bf16 | fp16
    precision: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 50
    ckpt_every: int = 0  # optimizer steps between checkpoints; 0: at epoch ends only
    eval_every: int = 1  # epochs
    resume: str = "auto"  # auto | never
    progress: bool = True
    compile: bool = False  # torch.compile the training forward of both branches
    compile_mode: str = "model"  # model: one graph per branch | blocks: ViT/Swin block by block
    channels_last: bool = True  # for convolutional models on CUDA
    count_allreduce: bool = False  # count DDP gradient all-reduces into summary.json (diagnostics)
    mask_preview: bool = True  # mask_preview.png at a run's first step: what the sub-branch was fed
    # bounds the rendezvous and every collective (a barrier while rank 0 writes a checkpoint included)
    dist_timeout_min: float = 30.0

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", self.epochs, "a positive integer")
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps, "null or > 0")
        _check(self.batch_size is None or self.batch_size > 0, "train.batch_size", self.batch_size,
               "null (from recipe.global_batch) or a positive integer")
        _check(self.accum_steps > 0, "train.accum_steps", self.accum_steps, "a positive integer")
        _check(self.batch_size is None or self.batch_size % self.accum_steps == 0, "train.batch_size",
               self.batch_size, f"a multiple of train.accum_steps={self.accum_steps}")
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        _choice("train.resume", self.resume, ("auto", "never"))
        _choice("train.compile_mode", self.compile_mode, ("model", "blocks"))
        _check(self.log_every > 0, "train.log_every", self.log_every, "a positive integer")
        _check(self.ckpt_every >= 0, "train.ckpt_every", self.ckpt_every, ">= 0")
        _check(self.eval_every > 0, "train.eval_every", self.eval_every, "a positive integer")
        _check(self.dist_timeout_min > 0, "train.dist_timeout_min", self.dist_timeout_min, "minutes, > 0")


@dataclass
class LoggerConfig:
    name: str = "none"  # none: metrics.jsonl and console only | wandb: W&B as well
    project: str = "masksub-exp"
    entity: str | None = None
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("logger.name", self.name, ("none", "wandb"))
        _choice("logger.mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class PaperConfig:
    """What the paper reports for this preset (ImageNet-1k top-1), for the README's recipe table."""

    baseline_top1: float | None = None
    masksub_top1: float | None = None
    layout: str | None = None  # the paper's GPU layout, e.g. "8x256" (GPUs x per-GPU batch)


@dataclass
class PathsConfig:
    log_dir: str = "outputs"
    output_dir: str = "outputs/default"  # this run's folder (Hydra's run dir)


@dataclass
class Settings:
    """The whole run, validated. `train(cfg)` works on this, never on raw dicts."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    masksub: MaskSubConfig = field(default_factory=MaskSubConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    name: str = "demo"
    seed: int = 0


def register_configs() -> None:
    """Register the schema so `conf/train.yaml` can name it first in its defaults list."""
    ConfigStore.instance().store(name="train_schema", node=Settings)


def to_settings(cfg: DictConfig | Settings) -> Settings:
    """Resolve and validate a composed config (raises ConfigError naming the bad key)."""
    if isinstance(cfg, Settings):
        return cfg
    from .hydra_errors import unknown_keys_in

    unknown = unknown_keys_in(cfg, Settings)  # a `+key=value` the schema lacks: Hydra keeps it, nothing reads it
    if unknown is not None:
        raise ConfigError(unknown)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Settings), cfg))
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf's validation errors: keep its message, which names the key
        raise ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
