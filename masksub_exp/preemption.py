"""Stop requests: SLURM preemption/timeout (SIGUSR2, through submitit) and SIGTERM/SIGINT elsewhere.

A signal only sets a flag; the loop polls it at every step (an async all-reduce of the flags, read
one step later) and again before each epoch-end eval and save, so all ranks agree on the step to
stop at; rank 0 saves a checkpoint there, and only then is the job handed back to submitit's own
handler, which requeues it (the requeued task resumes from that checkpoint). Outside a submitit
job, SIGTERM and SIGINT save and exit cleanly; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from .distributed import collective_failed

Handler = Callable[[int, FrameType | None], Any] | int | None


def in_submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


class Preempted(Exception):
    """Raised on ranks other than 0 after a coordinated stop: rank 0 saved and requeued the job."""


class StopSignal:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.signum: int | None = None
        self.previous: dict[int, Handler] = {}
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._group = None  # the default group when it is gloo; a gloo side group next to NCCL
        if self._distributed() and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # a collective: every rank builds its StopSignal
        if in_submitit_job():
            # submitit bypasses SIGTERM on purpose (SLURM sends it around requeues); we only take USR2
            signals = [signal.SIGUSR2]
        else:
            signals = [signal.SIGTERM, signal.SIGINT]
        if threading_main():
            for sig in signals:
                self.previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        print(f"received {signal.Signals(signum).name}: stopping at the next step boundary, after a checkpoint",
              file=sys.stderr, flush=True)

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _read_pending(self) -> bool:
        """Wait for the flag all-reduce started at the previous poll (long done by now) and read it."""
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        try:
            work.wait()
        except RuntimeError as exc:
            raise collective_failed("the stop-flag all-reduce", exc) from None
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

    def poll(self) -> bool:
        """Cheap enough for every step: reads the all-reduce of the flags started at the previous step and starts
        the next one (a collective: every rank calls it at every step). A signal is acted on one step late."""
        if not self._distributed():
            return self.signum is not None  # one process: a plain flag, no tensor, no sync
        if self._read_pending():
            return True
        # a CPU tensor on a gloo group: no device sync, the result is read one step later
        flag = torch.tensor([self.signum or 0], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return False

    def agreed(self) -> bool:
        """Whether any rank was asked to stop, now (blocking; every rank calls it at the same point): before the
        epoch-end eval and save, so a signal during the last steps of an epoch does not wait for them."""
        if not self._distributed():
            return self.signum is not None
        pending = self._read_pending()
        flag = torch.tensor([self.signum or 0], dtype=torch.int32)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        except RuntimeError as exc:
            raise collective_failed("the stop-flag all-reduce", exc) from None
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return pending or bool(flag.item())

    def drain(self) -> None:
        """Complete the flag all-reduce in flight, if any (every rank, at the same point)."""
        self._read_pending()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def hand_over(self, rank: int) -> None:
        """After the checkpoint: let submitit requeue the job (rank 0), or leave (other ranks)."""
        submitit_handler = self.previous.get(signal.SIGUSR2)
        self.restore()
        if self.signum == signal.SIGUSR2 and callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)  # rank 0: requeue and sys.exit; others: returns
            raise Preempted(f"stopped by SIGUSR2; rank 0 saved the checkpoint and requeued the job (rank {rank})")


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
