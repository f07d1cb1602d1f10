"""The machine a run ran on, in one line (summary.json's "machine"): a results page made from runs of several
machines (a budget run in parts, SLURM nodes) names each one instead of the machine that wrote the page."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a device is named: the results command records its calls' machine light
    import torch


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown CPU")


def cores() -> str:
    """E.g. '2 CPU cores (AMD EPYC 7B13)': the cores this process may use (a SLURM task or cgroup may get fewer than
    the machine has) and their model."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{count} CPU cores ({cpu_model()})"


def describe(device: torch.device | None = None) -> str:
    """E.g. '2 CPU cores (AMD EPYC 7B13), torch 2.10.0, CPU only' or '16 CPU cores (...), NVIDIA H200, torch ...'."""
    import torch

    accelerator = (torch.cuda.get_device_name(device) if device is not None and device.type == "cuda"
                   else "CPU only")
    return f"{cores()}, torch {torch.__version__}, {accelerator}"
