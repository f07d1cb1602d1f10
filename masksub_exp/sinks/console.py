"""A compact progress line per logged step and one line per evaluation."""

from __future__ import annotations

import sys
import time
from typing import Any


class ConsoleSink:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.start = time.monotonic()
        self.first_step: int | None = None

    def _eta(self, step: int) -> str:
        if self.first_step is None:
            self.first_step = step
            self.start = time.monotonic()
            return "?"
        done = step - self.first_step
        if done <= 0:
            return "?"
        seconds = (time.monotonic() - self.start) / done * max(0, self.total_steps - step)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def log(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "train":
            step = record["step"]
            sub = f" sub {record['loss_sub']:.4f}" if "loss_sub" in record else ""
            line = (f"step {step}/{self.total_steps} ep {record['epoch']} loss {record['loss_main']:.4f}{sub} "
                    f"lr {record['lr']:.2e} {record['img_per_s']:.0f} img/s eta {self._eta(step)}")
        elif record.get("kind") == "eval":
            ema = f" (ema {record['ema_top1']:.2f})" if "ema_top1" in record else ""
            line = f"eval ep {record['epoch']} top1 {record['top1']:.2f} top5 {record['top5']:.2f}{ema}"
        else:
            return
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
