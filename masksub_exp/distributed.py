"""Process-group setup from torchrun's variables (or a single process), and rank helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_MIN = 30.0  # sized for rank 0 writing and fsyncing a ViT-H + AdamW checkpoint while others wait


class DistributedTimeout(RuntimeError):
    """A rendezvous or a collective did not complete in time (a dead or unreachable rank)."""


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def cuda_index(local_rank: int, local_world_size: int, visible: int) -> int:
    """The CUDA device of this task, from how many GPUs it can see.

    A task that sees every GPU of its node (visible >= local_world_size) takes cuda:LOCAL_RANK; a task that
    SLURM bound to its own GPU (--gpu-bind, --gpus-per-task: CUDA_VISIBLE_DEVICES names one GPU) takes cuda:0.
    """
    if visible < 1:
        raise RuntimeError("train.device=cuda but this task sees no CUDA device (CUDA_VISIBLE_DEVICES)")
    if visible >= local_world_size:
        return local_rank
    if visible == 1:
        return 0
    raise RuntimeError(f"this task sees {visible} GPUs but its node runs {local_world_size} tasks: "
                       "give each task one GPU, or let every task see all of the node's GPUs")


def local_world_size() -> int:
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        index = cuda_index(local_rank, local_world_size(), torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def export_submitit_env() -> None:
    """In a submitit job of several tasks (one per GPU), export torchrun-style variables. A MASTER_ADDR or
    MASTER_PORT the user set (e.g. in hydra.launcher.setup) is kept: it is how a free port is chosen."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        env = submitit.helpers.TorchDistributedEnvironment()  # its port is MASTER_PORT when set
        env.master_addr = os.environ.get("MASTER_ADDR") or env.master_addr
        # keep every GPU visible: the device is picked from LOCAL_RANK and what the task sees
        env.export(set_cuda_visible_devices=False, overwrite=True)


def init_distributed(device_preference: str, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Join the process group of a submitit/SLURM job or of torchrun's variables, if any (NCCL on GPU,
    gloo on CPU); a single process otherwise. `timeout_min` bounds the rendezvous and every collective."""
    export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank,
                                    world_size=world_size, timeout=timedelta(minutes=timeout_min))
        except (RuntimeError, ValueError) as exc:  # torch's DistError family derives from RuntimeError
            raise DistributedTimeout(
                f"rank {rank} of {world_size} could not join the process group at MASTER_ADDR:MASTER_PORT={where} "
                f"within train.dist_timeout_min={timeout_min:g} ({type(exc).__name__}: {_first_sentence(exc)}); "
                "check that every node can reach that address and port") from None
    return DistInfo(rank, local_rank, world_size, device)


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text.split(". ")[0] if text else "no detail")[:200]


def collective_failed(what: str, exc: BaseException) -> DistributedTimeout:
    """One line for a collective that timed out or lost a peer."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistributedTimeout(f"rank {rank}: {what} did not complete (train.dist_timeout_min bounds the wait): "
                              f"another rank died, hangs or is unreachable ({_first_sentence(exc)})")


def is_collective_error(exc: BaseException) -> bool:
    """Whether `exc` is a collective that lost a peer: torch's DistError family (NCCL, the store) or gloo's
    transport errors, which torch raises as plain RuntimeErrors naming gloo."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return isinstance(exc, getattr(dist, "DistError", ())) or "gloo" in str(exc) or "NCCL" in str(exc)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(what: str = "the barrier") -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise collective_failed(what, exc) from None


def sync_batchnorm(*modules: nn.Module | None) -> None:
    """Average BatchNorm running statistics over the ranks (timm's distribute_bn, reduce-mean), in place, so
    eval and checkpoints see one model, not N. A no-op in one process or for models without BatchNorm."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    buffers = [buf for module in modules if module is not None for name, buf in module.named_buffers()
               if name.endswith(("running_mean", "running_var"))]
    if not buffers:
        return
    flat = torch.cat([buf.detach().float().flatten() for buf in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for buf in buffers:
        buf.copy_(flat[offset:offset + buf.numel()].view_as(buf))
        offset += buf.numel()


class AllReduceCounter:
    """A DDP comm hook that counts gradient all-reduces (one per bucket per synchronised backward)."""

    def __init__(self) -> None:
        self.calls = 0

    # no annotations: DDP compares them with the real types, and this module's are strings (PEP 563)
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.calls += 1
        return allreduce_hook(None, bucket)
