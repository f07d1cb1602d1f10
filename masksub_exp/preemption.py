"""Stop requests: SLURM preemption/timeout (SIGUSR2, through submitit) and SIGTERM/SIGINT elsewhere.

A signal only sets a flag; the loop polls it at step boundaries, all ranks agree on the step to
stop at, rank 0 saves a checkpoint there, and only then is the job handed back to submitit's own
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

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (a collective: every rank must call it at the same step)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum is not None  # one process: a plain flag, no tensor, no sync
        flag = torch.tensor([self.signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

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
