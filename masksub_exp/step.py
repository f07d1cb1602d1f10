"""The MaskSub training step, as a pure function of model, batch, loss and optimizer state.

    o_main = model(x);            backward(L(o_main, y) / 2k)            # main graph freed here
    o_sub  = model(x, sub=True);  backward(L(o_sub, p(o_main.detach())) / 2k)
    unscale, clip once on the summed gradients, optimizer.step()         # after all k micro-steps

With MaskSub off the step is the plain recipe: backward(L(o_main, y) / k). Under DDP every
backward but the last of the step runs under `no_sync()`, so each step all-reduces once.
The step never syncs with the host: losses come back as detached device tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .losses import RecipeLoss

# an image tensor, or a tokenised text batch (input_ids, attention_mask, ...)
Batch = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass
class StepResult:
    loss_main: torch.Tensor  # detached, mean over micro-steps
    loss_sub: torch.Tensor | None
    skipped: torch.Tensor | None = None  # fp16: whether the GradScaler skipped this step (inf/nan grads)


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and the GradScaler used with fp16."""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)


def _maybe_no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _backward(loss: torch.Tensor, precision: Precision) -> None:
    (precision.scaler.scale(loss) if precision.scaler is not None else loss).backward()


def batch_len(x: Batch) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else x.shape[0]


def batch_device(x: Batch) -> torch.device:
    return next(iter(x.values())).device if isinstance(x, Mapping) else x.device


def _micro_batches(x: Batch, y: torch.Tensor, k: int) -> Iterator[tuple[Batch, torch.Tensor]]:
    if k == 1:
        yield x, y
        return
    if batch_len(x) % k:
        raise ValueError(f"batch of {batch_len(x)} cannot be split into {k} equal micro-batches")
    if isinstance(x, Mapping):
        chunks = {key: v.chunk(k) for key, v in x.items()}
        xs: list[Batch] = [{key: c[i] for key, c in chunks.items()} for i in range(k)]
    else:
        xs = list(x.chunk(k))
    yield from zip(xs, y.chunk(k), strict=True)


def accumulate_gradients(
    model: nn.Module,
    x: Batch,
    y: torch.Tensor,
    loss: RecipeLoss,
    *,
    masksub: bool,
    accum_steps: int = 1,
    precision: Precision | None = None,
) -> StepResult:
    """Forward and backward of both branches over `accum_steps` micro-batches (grads add up)."""
    precision = precision or Precision()
    device = batch_device(x)
    branch_weight = 0.5 if masksub else 1.0
    total_main = torch.zeros((), device=device)
    total_sub = torch.zeros((), device=device) if masksub else None
    for i, (xb, yb) in enumerate(_micro_batches(x, y, accum_steps)):
        last = i == accum_steps - 1
        # main branch: never the last backward of the step when the sub-branch follows
        with _maybe_no_sync(model, sync=last and not masksub):
            with precision.autocast(device.type):
                out_main = model(xb)
            loss_main = loss.main(out_main, yb)
            _backward(loss_main * (branch_weight / accum_steps), precision)
        total_main += loss_main.detach()
        if masksub:
            with _maybe_no_sync(model, sync=last):
                with precision.autocast(device.type):
                    out_sub = model(xb, sub=True)
                loss_sub = loss.sub(out_sub, out_main)
                _backward(loss_sub * (branch_weight / accum_steps), precision)
            total_sub += loss_sub.detach()
    return StepResult(
        loss_main=total_main / accum_steps,
        loss_sub=None if total_sub is None else total_sub / accum_steps,
    )


def apply_gradients(
    optimizer: torch.optim.Optimizer,
    parameters: list[nn.Parameter],
    *,
    clip_grad: float | None = None,
    precision: Precision | None = None,
) -> torch.Tensor | None:
    """One unscale / clip / step for the summed gradients of both branches.

    Returns, with a GradScaler, a device bool: whether the step was skipped (an inf/nan gradient in
    either branch); the scaler lowers its scale exactly then. No host sync either way.
    """
    scaler = (precision or Precision()).scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad, foreach=True)
    if scaler is None:
        optimizer.step()
        return None
    scale_before = scaler._scale.clone()  # the public get_scale() would sync with the device
    scaler.step(optimizer)
    scaler.update()
    return scaler._scale < scale_before


def train_step(
    model: nn.Module,
    batch: tuple[Batch, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss: RecipeLoss,
    *,
    masksub: bool,
    accum_steps: int = 1,
    clip_grad: float | None = None,
    precision: Precision | None = None,
) -> StepResult:
    """One optimizer step. Gradients are zeroed first, so they stay inspectable afterwards."""
    optimizer.zero_grad(set_to_none=True)
    x, y = batch
    result = accumulate_gradients(
        model, x, y, loss, masksub=masksub, accum_steps=accum_steps, precision=precision
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    result.skipped = apply_gradients(optimizer, params, clip_grad=clip_grad, precision=precision)
    return result
