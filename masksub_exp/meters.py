"""Accumulate step results on the device between log points, and catch non-finite losses.

Nothing here reads a tensor on the host: the step never waits for the GPU. `check()` (at log
time and before every checkpoint) is the one place that syncs, so a NaN is caught before it can
reach a checkpoint, and is reported with the step and branch where it first appeared.
"""

from __future__ import annotations

import time

import torch

from .distributed import all_reduce_sum
from .step import StepResult

BRANCHES = ("main", "sub")


class NonFiniteLoss(FloatingPointError):
    """A NaN/inf loss: training stops, the last good checkpoint stays."""


class LossMeter:
    def __init__(self, device: torch.device, start_step: int = 0) -> None:
        self.device = device
        self.step = torch.tensor(start_step, device=device)  # counted on the device: no host->device copy
        self.first_bad = torch.full((2,), -1, dtype=torch.long, device=device)  # (step, branch) or -1
        self.amp_skips_total = 0
        # constants made once: the hot path allocates nothing per step
        self._zero = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4, device=self.device)  # loss_main, loss_sub, steps, skipped (fp16) steps
        self.images = 0
        self.data_time = 0.0
        self.start = time.perf_counter()

    def add(self, result: StepResult, images: int) -> None:
        sub = result.loss_sub if result.loss_sub is not None else self._zero
        skipped = result.skipped.float() if result.skipped is not None else self._zero
        self.step += 1
        branch = torch.where(~torch.isfinite(result.loss_main), 0, torch.where(~torch.isfinite(sub), 1, -1))
        new = (self.first_bad[0] < 0) & (branch >= 0)
        self.first_bad = torch.where(new, torch.stack([self.step, branch]), self.first_bad)
        self.sums += torch.stack([result.loss_main, sub, self._one, skipped])
        self.images += images

    def check(self) -> None:
        """Raise NonFiniteLoss if any rank has seen a non-finite loss (a sync; every rank must call it)."""
        first = self.first_bad.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)
        step, branch = first.tolist()
        if step >= 0:
            raise NonFiniteLoss(f"non-finite {BRANCHES[branch]}-branch loss at step {step}: training stopped")

    def averages(self) -> dict[str, float]:
        """Mean losses over the window (summed across ranks) and the fp16 skipped-step count; a sync."""
        loss_main, loss_sub, steps, skipped = all_reduce_sum(self.sums.clone()).tolist()
        self.amp_skips_total += int(skipped)
        return {"loss_main": loss_main / steps, "loss_sub": loss_sub / steps, "amp_skipped_steps": skipped}
