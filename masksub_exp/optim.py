"""Optimizer and per-step lr schedule from the recipe, through timm's factories."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from .config import OptimizerConfig, ScheduleConfig
from .models import MaskSubModel

# our schedule names -> timm's (linear decay is timm's poly schedule with power 1)
_SCHEDULES = {"cosine": ("cosine", 0.1), "linear": ("poly", 1.0), "constant": ("constant", 0.1)}


# timm names that map to torch optimizers with a fused CUDA implementation
_FUSED = {"adam", "adamw", "sgd", "momentum"}


def effective_lr(cfg: OptimizerConfig, global_batch: int) -> float:
    """The recipe's lr, scaled linearly by global_batch / lr_base_batch when the recipe says so."""
    if cfg.lr_base_batch is not None:  # validated > 0; null: the lr is used as written
        return cfg.lr * global_batch / cfg.lr_base_batch
    return cfg.lr


def build_optimizer(model: MaskSubModel, cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    kwargs: dict = {}
    if cfg.name.lower() in _FUSED and all(p.is_cuda for p in model.parameters()):
        kwargs["fused"] = True  # torch's fused CUDA kernels: one launch for the whole update
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps
    optimizer = create_optimizer_v2(
        model.net,  # timm's weight-decay filtering and layer decay read the network's own metadata
        opt=cfg.name,
        lr=lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=cfg.layer_decay,
        **kwargs,
    )
    extra = list(model.sub_params)
    if extra:  # adapter parameters (a mask token): no weight decay, full lr
        optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
    return optimizer


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int,
                    steps_per_epoch: int) -> Scheduler:
    """A schedule stepped per optimizer update (`scheduler.step_update(step)`)."""
    name, decay_rate = _SCHEDULES[cfg.name]
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=epochs,
        decay_rate=decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler
