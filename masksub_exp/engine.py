"""The one training loop: epochs, the step, logging cadence, evaluation and checkpoints.

It never knows the model family (the model runs its own sub-branch) nor where metrics end up
(it hands flat records to the sinks). Host syncs happen only every `train.log_every` steps (the
per-step stop poll reads an all-reduce started one step earlier).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoints, host, mask_preview
from .build import Parts
from .checkpoints import TrainState
from .data.imagefolder import count_bad_images
from .distributed import all_reduce_sum, barrier, sync_batchnorm
from .meters import LossMeter
from .preemption import StopSignal
from .step import Batch, batch_len, train_step
from .subbranch.base import call_network


def to_device(x: Batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> Batch:
    if isinstance(x, torch.Tensor):
        if x.dim() == 4:
            return x.to(device, non_blocking=True, memory_format=memory_format)
        return x.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in x.items()}


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


def log_train(p: Parts, meter: LossMeter, state: TrainState) -> None:
    meter.check()
    values = meter.averages()  # the only host sync of the logging window
    world = p.dist.world_size
    if p.precision.scaler is not None:
        values["amp_skipped_steps"] /= world  # every rank counts the same skips
    else:
        values.pop("amp_skipped_steps")
    loss_sub = values.pop("loss_sub")
    elapsed = time.perf_counter() - meter.start
    record: dict[str, Any] = {"kind": "train", "step": state.step, "epoch": state.epoch, **values}
    if p.settings.masksub.enabled:
        record["loss_sub"] = loss_sub
    record["lr"] = _current_lr(p.optimizer)
    record["img_per_s"] = meter.images * p.dist.world_size / max(elapsed, 1e-9)
    record["data_wait_frac"] = meter.data_time / max(elapsed, 1e-9)
    if p.dist.device.type == "cuda":
        record["peak_mem_mb"] = torch.cuda.max_memory_allocated(p.dist.device) / 2**20
        torch.cuda.reset_peak_memory_stats(p.dist.device)
    p.sinks.log(record)
    meter.reset()


@torch.no_grad()
def evaluate(net: torch.nn.Module, p: Parts, loader: Any = None) -> dict[str, float]:
    """Top-1/top-5 (%) of the main branch over the whole eval set (or `loader`'s), summed across ranks."""
    was_training = net.training
    net.eval()
    k = min(5, p.settings.data.num_classes)
    totals = torch.zeros(3, device=p.dist.device)  # correct@1, correct@k, count
    for x, y in (p.loaders.eval if loader is None else loader):
        x, y = to_device(x, p.dist.device, p.memory_format), y.to(p.dist.device, non_blocking=True)
        with p.precision.autocast(p.dist.device.type):
            logits = call_network(net, x)
        topk = logits.float().topk(k, dim=-1).indices
        hits = topk.eq(y.unsqueeze(-1))
        totals += torch.stack([hits[:, 0].sum(), hits.any(-1).sum(), torch.tensor(len(y), device=y.device)]).float()
    net.train(was_training)
    correct1, correctk, count = all_reduce_sum(totals).tolist()
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correctk / count}


def evaluate_all(p: Parts, state: TrainState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    sync_batchnorm(p.model.net, p.ema.module if p.ema is not None else None)  # one model, not N, is evaluated
    record: dict[str, Any] = {"kind": "eval", "step": state.step, "epoch": state.epoch, **evaluate(p.model.net, p),
                              **({"eval_split": "holdout"} if p.loaders.split else {}), **(extra or {})}
    if p.ema is not None:
        record.update({f"ema_{k}": v for k, v in evaluate(p.ema.module, p).items()})
    p.sinks.log(record)
    return record


def evaluate_test(p: Parts, state: TrainState) -> dict[str, Any]:
    """With data.holdout, the test split once at the end: reported beside the held-out numbers, never selected on."""
    if p.loaders.test is None:
        return {}
    record = {"kind": "test", "step": state.step, "epoch": state.epoch, **evaluate(p.model.net, p, p.loaders.test)}
    p.sinks.log(record)
    split = p.loaders.split.summary() if p.loaders.split is not None else {}
    return {"test_top1": record["top1"], "test_top5": record["top5"], **split}


def save_checkpoint(p: Parts, state: TrainState, meter: LossMeter) -> None:
    meter.check()  # never let a NaN reach a checkpoint: the last good one stays
    sync_batchnorm(p.model.net, p.ema.module if p.ema is not None else None)  # in place: resume == continue
    rng = [checkpoints.rng_state()]
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * p.dist.world_size
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if p.dist.is_main:
        payload = checkpoints.build_payload(parts=p, state=state, cfg_hash=p.cfg_hash, rng=rng)
        checkpoints.save_atomic(payload, p.run_dir / "checkpoints" / "last.pt")
    p.last_saved_step = state.step
    barrier("the barrier after a checkpoint write")


def run_batch(p: Parts, state: TrainState, x: Batch, y: torch.Tensor, meter: LossMeter, max_steps: int) -> None:
    """Everything the loop does for one batch already on the device: the hot path."""
    t = p.settings.train
    if p.mixup is not None:
        x, y = p.mixup(x, y)
    p.scheduler.step_update(num_updates=state.step)
    result = train_step(p.train_model, (x, y), p.optimizer, p.loss, masksub=p.settings.masksub.enabled,
                        accum_steps=t.accum_steps, clip_grad=p.settings.recipe.clip_grad, precision=p.precision)
    if p.ema is not None:
        p.ema.update(p.model.net, step=state.step)
    state.step += 1
    state.batch_in_epoch += 1
    if p.model.sub is not None and p.model.sub.recorded is not None:  # a Python check: no sync unless asked
        mask_preview.publish(p.model.sub.take_record(), p, state.step)  # the mask this very step used
    meter.add(result, batch_len(x))
    if state.step % t.log_every == 0 or state.step == max_steps:
        log_train(p, meter, state)
    if t.ckpt_every and state.step % t.ckpt_every == 0:
        save_checkpoint(p, state, meter)


def train_epoch(p: Parts, state: TrainState, max_steps: int, meter: LossMeter, stop: StopSignal | None) -> str:
    """Run the rest of `state.epoch`: "done" at its end, "cap" at train.max_steps, "stop" on a signal."""
    p.loaders.sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * p.batch_size)
    p.model.train()
    fetch_start = time.perf_counter()
    for x, y in p.loaders.train:
        meter.data_time += time.perf_counter() - fetch_start
        x, y = to_device(x, p.dist.device, p.memory_format), y.to(p.dist.device, non_blocking=True)
        run_batch(p, state, x, y, meter, max_steps)
        if state.step >= max_steps:
            return "done" if state.batch_in_epoch >= p.steps_per_epoch else "cap"
        # every step: one process reads a flag; several read the async all-reduce started one step earlier
        if stop is not None and stop.poll():
            return "stop"
        fetch_start = time.perf_counter()
    return "done"


def fit(p: Parts, state: TrainState, stop: StopSignal | None = None,
        on_eval: Callable[[int, dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Train from `state` to the end, to train.max_steps or to a stop signal; returns the summary.

    `on_eval(epoch, eval record)` runs on every rank after each epoch-end eval and save that leaves training to
    do (an Optuna trial reports there, masksub_exp/pruning.py); "stop" ends the run there as `pruned`."""
    t = p.settings.train
    max_steps = min(p.total_steps, t.max_steps or p.total_steps)
    finished = finished_summary(p.run_dir, state.step) if state.step >= max_steps else None
    if finished is not None:  # re-running a finished run redoes nothing and keeps its numbers (wall time too)
        print(f"already finished at step {state.step}: {p.run_dir / 'summary.json'}", file=sys.stderr, flush=True)
        return finished
    if p.dist.is_main and p.loaders.split is not None:
        p.loaders.split.save(p.run_dir)  # which training samples were held out (data.holdout)
    meter = LossMeter(p.dist.device, start_step=state.step)
    if p.dist.is_main and t.mask_preview and state.step == 0 and p.model.sub is not None:
        p.model.sub.record_next = True  # the first step's sub-branch keeps its mask for mask_preview.png
    started = time.perf_counter()
    start_step = state.step
    last_eval: dict[str, Any] = {}
    outcome = "done"
    epoch_seconds: list[float] = []  # training time of each whole epoch run in this session (no eval, no save)
    while state.epoch < t.epochs and state.step < max_steps:
        whole_epoch = state.batch_in_epoch == 0
        epoch_start = time.perf_counter()
        outcome = train_epoch(p, state, max_steps, meter, stop)
        if outcome == "done" and state.step < max_steps and stop is not None and stop.agreed():
            # a signal during the epoch's last steps: save before the eval (state stays at the epoch's end;
            # the resumed run finds no batch left, evaluates and moves on)
            outcome = "stop"
        if outcome != "done":
            break
        timing = {}
        if whole_epoch:
            epoch_seconds.append(time.perf_counter() - epoch_start)
            timing = {"epoch_train_s": epoch_seconds[-1]}
        state.epoch += 1
        state.batch_in_epoch = 0
        if state.epoch % t.eval_every == 0 or state.epoch == t.epochs:
            last_eval = evaluate_all(p, state, timing)
        save_checkpoint(p, state, meter)
        if (on_eval is not None and last_eval.get("step") == state.step and state.step < max_steps
                and on_eval(state.epoch, last_eval) == "stop"):
            outcome = "pruned"  # the checkpoint just saved is kept; the summary says so
            break
    if stop is not None:
        stop.drain()  # the last step's flag all-reduce, if one is in flight
    if outcome == "stop":
        if p.last_saved_step != state.step:  # (train.ckpt_every may have saved this very step)
            save_checkpoint(p, state, meter)  # the requeued (or re-run) task resumes exactly here
    elif last_eval.get("step") != state.step:  # stopped at the step cap mid-epoch, or resumed a finished run
        last_eval = evaluate_all(p, state)
        save_checkpoint(p, state, meter)
    summary = {
        "status": (f"stopped by {stop.name}" if outcome == "stop" and stop else "pruned" if outcome == "pruned" else
                   "complete" if state.step >= p.total_steps else "capped by train.max_steps"),
        "name": p.settings.name,
        "model": p.settings.model.name,
        "recipe": p.settings.recipe.name,
        "masksub_mode": p.settings.masksub.mode,
        "masksub_ratio": p.settings.masksub.ratio if p.settings.masksub.enabled else 0.0,
        "seed": p.settings.seed,
        "params": sum(param.numel() for param in p.model.net.parameters()),
        "step": state.step,
        "epoch": state.epoch,
        "steps_this_session": state.step - start_step,
        "resumed_from_step": start_step,
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "wall_time_s": time.perf_counter() - started,
        **({"epoch_train_s": sum(epoch_seconds) / len(epoch_seconds)} if epoch_seconds else {}),
        "machine": host.describe(p.dist.device),  # this session's: the page names every machine a budget ran on
        "world_size": p.dist.world_size,
        "global_batch": p.batch_size * p.dist.world_size,
        "batch_plan": p.batch_plan,
        "lr": p.lr,
        "bad_images": count_bad_images(p.run_dir / "bad_images.txt"),
        **({"grad_allreduces": p.allreduce_counter.calls} if p.allreduce_counter else {}),
        **({"amp_skipped_steps": meter.amp_skips_total // p.dist.world_size} if p.precision.scaler else {}),
        **{k: v for k, v in last_eval.items() if k not in ("kind", "step", "epoch", "epoch_train_s")},
        **(evaluate_test(p, state) if outcome not in ("stop", "pruned") else {}),
    }
    if p.dist.is_main and outcome != "stop":  # a stopped run's summary would look final: write none
        write_json(p.run_dir / "summary.json", summary)
        p.sinks.summarize(summary)  # the final values in W&B's run summary too
    return summary


def finished_summary(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The summary of a run that already ended at `step`, if it has one (every rank reads the same file)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("step") == step else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
