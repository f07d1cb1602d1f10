"""Build every part of a run from validated settings: data, model + sub-branch, optimizer, schedule,
loss, mixing, EMA, precision and sinks. The engine receives them ready to use."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoints import config_hash
from .config import ConfigError, Settings
from .data import Loaders, build_loaders
from .distributed import AllReduceCounter, DistInfo
from .losses import RecipeLoss, build_loss
from .models import MaskSubModel, build_model, compile_network, is_token_model
from .optim import build_optimizer, build_scheduler, effective_lr
from .pretrained import check_pretrained_file
from .sinks import Sinks, build_sinks
from .step import Precision


@dataclass
class Parts:
    settings: Settings
    dist: DistInfo
    run_dir: Path
    model: MaskSubModel  # the bare model (checkpoints, EMA, eval)
    train_model: nn.Module  # what the step calls: the model, or its DDP wrapper
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss: RecipeLoss
    mixup: Mixup | None
    ema: ModelEmaV3 | None
    precision: Precision
    sinks: Sinks
    steps_per_epoch: int
    total_steps: int
    lr: float
    cfg_hash: str
    memory_format: torch.memory_format = torch.contiguous_format
    allreduce_counter: AllReduceCounter | None = None
    run_id: str = ""  # the tracker's run id: the same across resumes and requeues
    last_saved_step: int | None = None
    batch_size: int = 0  # per process, per optimizer step
    batch_plan: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(name: str, device_type: str) -> tuple[str, bool]:
    """train.precision on a device -> (autocast dtype name, whether fp32 matmuls/convolutions may use TF32).

    `auto` is bf16 autocast with TF32 for what stays fp32 on CUDA, and fp32 on the CPU. Explicit values
    mean what they say: fp32 is full fp32 (TF32 off) on any device; bf16 and fp16 allow TF32 on CUDA.
    """
    resolved = ("bf16" if device_type == "cuda" else "fp32") if name == "auto" else name
    return resolved, device_type == "cuda" and resolved != "fp32"


def describe_precision(name: str, device_type: str) -> str:
    """The plan line's words for the precision a run trains in."""
    resolved, tf32 = resolve_precision(name, device_type)
    words = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a GradScaler"}[resolved]
    if tf32:
        words += ", TF32 for fp32 matmuls"
    elif device_type == "cuda":
        words += " (TF32 off)"
    return f"{words} (train.precision={name} on {device_type})"


def build_precision(name: str, device: torch.device) -> Precision:
    resolved, tf32 = resolve_precision(name, device.type)
    if resolved == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision='fp16' needs a CUDA device; use bf16 or fp32 on the CPU")
    if device.type == "cuda":  # process-wide switches: set both ways, so fp32 means fp32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if resolved == "bf16":
        return Precision(torch.bfloat16)
    if resolved == "fp16":
        return Precision(torch.float16, torch.amp.GradScaler("cuda"))
    return Precision()


def batch_plan(settings: Settings, world_size: int) -> tuple[int, str]:
    """The per-process batch, and a sentence saying how the global batch is made up.

    train.batch_size=null keeps the recipe's global batch on any number of processes (set
    train.accum_steps to split each process's batch into micro-batches when it does not fit).
    """
    t, target = settings.train, settings.recipe.global_batch
    if t.batch_size is None:
        if target is None:
            raise ConfigError("train.batch_size is null but the recipe sets no global_batch: give train.batch_size")
        if target % world_size:
            raise ConfigError(f"recipe.global_batch={target} cannot be split over {world_size} processes: "
                              "use a divisor of it as the number of GPUs, or set train.batch_size")
        per = target // world_size
    else:
        per = t.batch_size
    if per % t.accum_steps:
        raise ConfigError(f"train.accum_steps={t.accum_steps} does not divide the per-process batch {per}")
    micro = f" in {t.accum_steps} micro-batches of {per // t.accum_steps}" if t.accum_steps > 1 else ""
    plan = f"global batch {per * world_size} = {world_size} process(es) x {per}{micro}"
    if target is not None and per * world_size != target:
        plan += f" (the recipe's global batch is {target}; the lr follows the recipe's scaling rule)"
    return per, plan


def build_mixup(settings: Settings, batch_size: int) -> Mixup | None:
    aug = settings.recipe.aug
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    if batch_size % 2:
        raise ConfigError(f"train.batch_size={batch_size}: mixup/cutmix need an even batch size")
    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, label_smoothing=aug.label_smoothing,
                 num_classes=settings.data.num_classes)


def channels_last(settings: Settings, model: MaskSubModel, dist: DistInfo) -> bool:
    return settings.train.channels_last and dist.device.type == "cuda" and not is_token_model(model.net)


def prepare_model(settings: Settings, dist: DistInfo) -> MaskSubModel:
    """The model with its sub-branch, on the device, in its memory format, compiled if asked."""
    model = build_model(settings.model, settings.data, settings.masksub).to(dist.device)
    if channels_last(settings, model, dist):
        model = model.to(memory_format=torch.channels_last)
    if settings.train.compile:
        compile_network(model, settings.train.compile_mode)
    return model


def build_parts(settings: Settings, dist: DistInfo, run_dir: Path, *, resumed_step: int = 0,
                run_id: str = "") -> Parts:
    seed_everything(settings.seed + dist.rank)
    t = settings.train
    precision = build_precision(t.precision, dist.device)  # checks first: nothing is built on a bad config
    check_pretrained_file(settings.model)  # a missing or refused model.checkpoint (safe_load.py) fails here
    batch_size, plan = batch_plan(settings, dist.world_size)
    plan += f"; {describe_precision(t.precision, dist.device.type)}" + (f"; torch.compile ({t.compile_mode})"
                                                                        if t.compile else "")
    mixup = build_mixup(settings, batch_size)
    loaders = build_loaders(settings.data, settings.recipe.aug, batch_size=batch_size, seed=settings.seed,
                            rank=dist.rank, world_size=dist.world_size,
                            pin_memory=settings.data.pin_memory and dist.device.type == "cuda",
                            bad_log=run_dir / "bad_images.txt", tokenizer_folder=settings.model.checkpoint,
                            device=dist.device)
    steps_per_epoch = len(loaders.train)
    total_steps = steps_per_epoch * t.epochs
    # the model is built after the loaders so its initialisation does not depend on the data
    model = prepare_model(settings, dist)
    train_model: nn.Module = model
    allreduce_counter = None
    if dist.distributed:
        train_model = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda"
                                              else None)
        if t.count_allreduce:
            allreduce_counter = AllReduceCounter()
            train_model.register_comm_hook(None, allreduce_counter.hook)
    lr = effective_lr(settings.recipe.optimizer, batch_size * dist.world_size)
    optimizer = build_optimizer(model, settings.recipe.optimizer, lr)
    scheduler = build_scheduler(optimizer, settings.recipe.schedule, epochs=t.epochs,
                                steps_per_epoch=steps_per_epoch)
    ema = ModelEmaV3(model.net, decay=settings.recipe.ema_decay) if settings.recipe.ema_decay else None
    sinks = build_sinks(settings, run_dir, is_main=dist.is_main, world_size=dist.world_size,
                        total_steps=min(total_steps, t.max_steps or total_steps), resumed_step=resumed_step,
                        run_id=run_id)
    return Parts(
        settings=settings, dist=dist, run_dir=run_dir, model=model, train_model=train_model, loaders=loaders,
        optimizer=optimizer, scheduler=scheduler, loss=build_loss(settings.recipe, mixing=mixup is not None),
        mixup=mixup, ema=ema, precision=precision, sinks=sinks,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, lr=lr, cfg_hash=config_hash(settings),
        memory_format=torch.channels_last if channels_last(settings, model, dist) else torch.contiguous_format,
        allreduce_counter=allreduce_counter, run_id=run_id, batch_size=batch_size, batch_plan=plan,
    )
