"""Progress: a tqdm bar on a terminal, otherwise one compact line per logged step and per evaluation."""

from __future__ import annotations

import sys
import time
from typing import Any


def _train_text(record: dict[str, Any]) -> str:
    sub = f" sub {record['loss_sub']:.4f}" if "loss_sub" in record else ""
    return f"loss {record['loss_main']:.4f}{sub} lr {record['lr']:.2e} {record['img_per_s']:.0f} img/s"


def _eval_text(record: dict[str, Any]) -> str:
    ema = f" (ema {record['ema_top1']:.2f})" if "ema_top1" in record else ""
    return f"eval ep {record['epoch']} top1 {record['top1']:.2f} top5 {record['top5']:.2f}{ema}"


class ConsoleSink:
    def __init__(self, total_steps: int, start_step: int = 0, tty: bool | None = None) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        seconds = (time.monotonic() - self.start) / done * max(0, self.total_steps - step)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def log(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if self.bar is not None:
            if kind == "train":
                self.bar.update(record["step"] - self.bar.n)
                self.bar.set_postfix_str(_train_text(record), refresh=False)
            elif kind == "eval":
                self.bar.write(_eval_text(record), file=sys.stderr)
            return
        if kind == "train":
            line = (f"step {record['step']}/{self.total_steps} ep {record['epoch']} {_train_text(record)} "
                    f"eta {self._eta(record['step'])}")
        elif kind == "eval":
            line = _eval_text(record)
        else:
            return
        print(line, file=sys.stderr, flush=True)

    def close(self, exit_code: int = 0) -> None:
        if self.bar is not None:
            self.bar.close()
