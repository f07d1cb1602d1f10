"""W&B as one more sink (rank 0 only). Imported only when `logger=wandb`.

The run id lives in the run folder and in every checkpoint, and W&B is initialised with
`resume="allow"`, so a requeued or re-run job continues the same W&B run; new runs get new ids.

Every step reaches W&B once. W&B writes its run file through a buffer that only a clean finish flushes,
so a killed attempt leaves W&B short of what `metrics.jsonl` holds. On (re)start the sink works out the
last step W&B holds (offline: the history rows in the run's earlier offline files, exactly what
`wandb sync` will upload; online: the server's `starting_step`), replays every `metrics.jsonl` step after
it, and from then on skips steps W&B already holds (a resume from a checkpoint older than what W&B got).

An eval or test record can come at a step W&B already holds: a stop (preemption, SIGTERM) during an epoch's
last steps saves at the epoch's end before the epoch's eval, the stopped attempt's W&B run ends with that
step's training row, and the resumed run evaluates at that same step. W&B refuses rows behind its step, so
(offline, where the files say which records W&B holds) such a record goes to the next step W&B has not
passed; its curves are drawn against `<kind>/epoch`, and `<kind>/step` keeps the optimizer step it was taken
at. Online, the server does not say which records it holds, so the record is skipped there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import wandb

from ..config import Settings
from ..distributed import DistributedTimeout
from ..meters import NonFiniteLoss
from .wandb_file import LATE_KINDS, Held, held

# families by the timm module that defines the model; anything else timm builds is a CNN here
FAMILY_MODULES = {"vit": ("vision_transformer", "deit", "eva", "beit", "vision_transformer_relpos"),
                  "swin": ("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")}


def resolve_mode(mode: str) -> str:
    """auto: online with an API key (env or netrc), offline without one."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb():
        return "online"
    return "offline"


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": dirty if commit else None}


def run_metadata(world_size: int) -> dict[str, Any]:
    env = os.environ
    return {
        **git_state(Path(__file__).resolve().parents[2]),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0")),
        "world_size": world_size,
    }


def model_family(model_name: str) -> str:
    """vit, swin, cnn (other timm models) or the transformers architecture (bert for BertFor...)."""
    if model_name[:1].isupper():  # a transformers class name
        return model_name.split("For")[0].lower() or "text"
    from timm.models import is_model_in_modules

    for family, modules in FAMILY_MODULES.items():
        if is_model_in_modules(model_name, list(modules)):
            return family
    return "cnn"


def run_tags(settings: Settings) -> list[str]:
    """The user's tags, then preset, model family and MaskSub mode: what a sweep is filtered by."""
    mode = settings.masksub.mode if settings.masksub.enabled else "off"
    auto = [f"preset:{settings.name}", f"family:{model_family(settings.model.name)}", f"masksub:{mode}"]
    return [*settings.logger.tags, *(tag for tag in auto if tag not in settings.logger.tags)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                continue
    return out


def failure_alert(exc: BaseException | None) -> tuple[str, str]:
    """(title, text) of the alert for a run that ends with `exc`."""
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "the run ended with a non-zero exit code"
    if isinstance(exc, NonFiniteLoss):
        return "NaN stop", text
    if isinstance(exc, DistributedTimeout):
        return "lost rank", text
    return "run failed", text


class WandbSink:
    def __init__(self, settings: Settings, run_dir: Path, run_id: str, *, group: str | None, name: str,
                 world_size: int) -> None:
        cfg = settings.logger
        self.mode = resolve_mode(cfg.mode)
        # read before init: init starts this session's own (empty) offline folder
        self.held = held(run_dir, run_id) if self.mode == "offline" else Held()
        config = {**asdict(settings), "meta": run_metadata(world_size)}
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, mode=self.mode, dir=str(run_dir), id=run_id,
            resume="allow", group=group, job_type=settings.recipe.name, name=name, tags=run_tags(settings),
            config=config,
        )
        # eval and test curves against the epoch, not the optimizer step
        for kind in ("eval", "test"):
            self.run.define_metric(f"{kind}/epoch")
            self.run.define_metric(f"{kind}/*", step_metric=f"{kind}/epoch")
        self.run.define_metric("eval/top1", step_metric="eval/epoch", summary="max,last")
        starting = self.run.starting_step if self.mode == "online" else 0
        self.held_until = max(self.held.until, starting - 1)  # the last step W&B holds (-1: none)
        self.best: tuple[float, int] | None = None
        self.replayed = 0
        if self.mode != "disabled":
            for record in read_jsonl(run_dir / "metrics.jsonl"):  # the sink after JsonlSink: already truncated
                self.replayed += self.log(record)

    def _track_best(self, record: dict[str, Any]) -> None:
        if record.get("kind") != "eval" or "top1" not in record:
            return
        if self.best is None or record["top1"] > self.best[0]:
            self.best = (record["top1"], record["epoch"])
            self.run.summary.update({"best/top1": self.best[0], "best/epoch": self.best[1]})

    def log(self, record: dict[str, Any]) -> bool:
        """Send `record` to W&B unless W&B holds it already; True when sent."""
        self._track_best(record)
        step, kind = record.get("step"), record.get("kind")
        if step is None:
            return False
        values = {f"{kind}/{k}": v for k, v in record.items() if k not in ("kind", "step")}
        if kind in LATE_KINDS:
            values[f"{kind}/step"] = step
        if step > self.held_until:
            self.run.log(values, step=step)
            return True
        # W&B keeps the steps it holds; an eval/test record it lacks goes to the next step it has not passed
        if self.mode == "offline" and kind in LATE_KINDS and (kind, step) not in self.held.records:
            self.held.records.add((kind, step))
            self.run.log(values, step=self.held_until + 1)
            return True
        return False

    def image(self, key: str, path: Path, step: int) -> None:
        if step > self.held_until:
            self.run.log({key: wandb.Image(str(path))}, step=step)

    def summarize(self, summary: dict[str, Any]) -> None:
        """summary.json's values, under final/, in the W&B run's summary."""
        self.run.summary.update({f"final/{k}": v for k, v in summary.items()
                                 if isinstance(v, int | float | str | bool)})

    def close(self, exit_code: int = 0) -> None:
        """Alert on a failure, finish the run and return once its run file (`run-<id>.wandb`) is complete.

        The exception that ends a failed run is the one being handled while the caller's `finally` runs
        (train.py closes the sinks there), so `sys.exc_info()` names it: a NaN stop, a lost rank, or
        anything else. `finish()` returns when W&B's service (wandb-core) has handled the exit record, but
        the service writes the run file through a buffer that it flushes when the run's stream closes, and
        `finish()` asks for that close without waiting for it (a one-way `inform_finish`). Right after
        `finish()` the file can still be 7 bytes long, so a `wandb sync` of a finished run would upload a
        partial run (seen in tests/test_logging.py). `wandb.teardown()` waits for the service process to
        exit, which closes and flushes every stream; it is skipped when another W&B run of this process is
        still active.
        """
        if exit_code:
            title, text = failure_alert(sys.exc_info()[1])
            self.run.alert(title=title, text=text, level=wandb.AlertLevel.ERROR)
        self.run.finish(exit_code=exit_code)
        if wandb.run is None:
            wandb.teardown()
