"""Atomic checkpoints of everything a bit-exact resume needs.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
`last.pt`, so a crash at any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, Settings
from .safe_load import safe_torch_load

FORMAT_VERSION = 1


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (per process)


def config_hash(settings: Settings) -> str:
    """A hash of everything that changes the trajectory (not caps, logging or worker counts)."""
    d = asdict(settings)
    for key in ("max_steps", "log_every", "ckpt_every", "eval_every", "resume", "progress", "device", "compile",
                "compile_mode", "channels_last", "count_allreduce", "dist_timeout_min", "mask_preview"):
        d["train"].pop(key, None)
    d["model"].pop("trust_checkpoint_globals", None)  # what a file may load, not what the run computes
    d["data"].pop("num_workers")
    d["data"].pop("pin_memory")
    if not d["data"].get("batch_augment"):  # off: hash as before the key existed
        d["data"].pop("batch_augment", None)
    if not d["data"].get("holdout"):  # no held-out split: hash as before the key existed, so old runs resume
        d["data"].pop("holdout", None)
        d["data"].pop("holdout_seed", None)
    d.pop("paths")
    d.pop("paper")
    d.pop("logger")
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StorageError(OSError):
    """The run folder cannot be written (permissions, a full disk, a read-only file system)."""


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to `path` atomically (temp file + fsync + rename + fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        kept = " the previous checkpoint is intact." if path.exists() else ""
        raise StorageError(exc.errno, f"cannot write checkpoint {path}: {exc.strerror or exc}.{kept}") from exc
    except RuntimeError as exc:
        # torch.save's zip writer reports a short write (a full disk) only as "unexpected pos"
        if "inline_container" not in str(exc):
            raise
        free = shutil.disk_usage(path.parent).free // 2**20
        kept = " The previous checkpoint is intact." if path.exists() else ""
        raise StorageError(28, f"cannot write checkpoint {path}: the write failed with {free} MiB free on that "
                           f"file system (full disk?).{kept}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temp files of checkpoint writes that a kill interrupted: never loaded, safe to delete."""
    stale = list(folder.glob(".*.tmp.*")) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    return stale


def load(path: Path, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint, its tensors memory-mapped from the file (mmap=True): every rank of a node shares the
    page cache instead of holding its own copy, and pages are read only when a state dict is loaded.
    Drop the payload after `restore_payload` (an atomic save replaces the file; the mapping stays valid).

    Read with weights_only=True: a run folder may sit on a shared file system, so a planted file must not
    run code. Our format needs only the allowlist's numpy arrays (numpy's RNG state) beyond tensors and
    plain values; anything else is refused in one line (UnsafeCheckpointError) unless `trusted` names it."""
    payload = safe_torch_load(path, label=str(path), trusted=trusted, mmap=True, resume=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a masksub-exp checkpoint (format {FORMAT_VERSION})")
    return payload


class LayoutChanged(ConfigError):
    """A checkpoint written by another number of processes or another per-process batch."""


def check_layout(payload: dict[str, Any], world_size: int, batch_size: int) -> None:
    """Refuse a resume on another world size or per-process batch: the data position (batches per process)
    and the per-rank RNG streams saved in the checkpoint would not fit, so the resume could not be exact."""
    saved_world = payload.get("world_size", len(payload["rng"]))  # older checkpoints: one RNG state per rank
    saved_batch = payload.get("batch_size")
    if saved_world == world_size and saved_batch in (None, batch_size):
        return
    was = f"{saved_world} process(es)" + (f" x {saved_batch} per process" if saved_batch is not None else "")
    raise LayoutChanged(
        f"the checkpoint was written by {was}, this run has {world_size} process(es) x {batch_size}: "
        "resuming would skip or repeat samples and reuse RNG streams; run with the original layout "
        "(hydra.launcher nodes/tasks_per_node, train.batch_size) or start over with train.resume=never")


def build_payload(*, parts: Any, state: TrainState, cfg_hash: str, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything in `parts` (an engine.Parts), the loop position, every rank's RNG streams, the config hash."""
    return {
        "format": FORMAT_VERSION,
        "config_hash": cfg_hash,
        "run_id": parts.run_id,
        "state": asdict(state),
        "model": parts.model.net.state_dict(),
        "sub_params": parts.model.sub_params.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.precision.scaler.state_dict() if parts.precision.scaler is not None else None,
        "rng": rng,
        "world_size": parts.dist.world_size,  # the layout a resume must match (check_layout)
        "batch_size": parts.batch_size,
    }


def restore_payload(payload: dict[str, Any], parts: Any, rank: int = 0) -> TrainState:
    check_layout(payload, parts.dist.world_size, parts.batch_size)
    parts.model.net.load_state_dict(payload["model"])
    parts.model.sub_params.load_state_dict(payload["sub_params"])
    if parts.ema is not None and payload["ema"] is not None:
        parts.ema.load_state_dict(payload["ema"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    parts.scheduler.load_state_dict(payload["scheduler"])
    if parts.precision.scaler is not None and payload["scaler"] is not None:
        parts.precision.scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"][rank])  # one stream per rank: check_layout made sure there is one
    return TrainState(**payload["state"])
