"""Training-step throughput and peak memory: MaskSub off vs on, our loop vs a bare loop.

    python -m masksub_exp.bench [--device cuda] [--models vit_s16,vit_b16,swin_t,resnet50]
                                [--batch-size N] [--compile] [--json]
    python -m masksub_exp.bench --loader ...     # the input pipeline per recipe (masksub_exp/bench/loader.py)
    python -m masksub_exp.bench --train experiment=... [key=value ...]   # a preset end to end through train()

Four modes per model, measured side by side in one process on one resident synthetic batch:
`baseline` and `masksub` run the engine's own per-batch hot path (`engine.run_batch`: schedule,
step, EMA hook, loss meter, periodic logging); `bare_baseline` and `bare_masksub` run a ~20-line
loop doing the same forward/backward/step with nothing around it. Data loading is excluded.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..build import build_parts, channels_last, prepare_model
from ..checkpoints import TrainState
from ..config import DataConfig, MaskSubConfig, ModelConfig, OptimizerConfig, RecipeConfig, Settings, TrainConfig
from ..distributed import DistInfo, pick_device
from ..engine import LossMeter, run_batch
from ..models import MaskSubModel
from ..optim import build_optimizer

MODELS = {
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "resnet50": "resnet50",
}
MODES = ("bare_baseline", "baseline", "bare_masksub", "masksub")


@dataclass
class Record:
    model: str
    mode: str
    batch_size: int
    img_per_s: float
    step_ms: float
    peak_mem_mb: float | None
    device: str
    precision: str
    compiled: bool
    compile_mode: str = ""


def settings_for(model: str, args: argparse.Namespace, masksub: bool) -> Settings:
    return Settings(
        model=ModelConfig(name=MODELS.get(model, model), kwargs={"img_size": args.img_size}
                          if "resnet" not in model else {}),
        data=DataConfig(name="synthetic", num_classes=1000, in_chans=3, img_size=args.img_size, mean=[0.0] * 3,
                        std=[1.0] * 3, synthetic_train_size=args.batch_size, synthetic_val_size=1),
        recipe=RecipeConfig(epochs=1, optimizer=OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.05)),
        masksub=MaskSubConfig(mode="mask" if masksub else "off", ratio=0.5),
        train=TrainConfig(epochs=1, batch_size=args.batch_size, precision=args.precision, device=args.device,
                          log_every=50, progress=False, compile=args.compile, compile_mode=args.compile_mode),
        name="bench",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, device: torch.device, warmup: int, steps: int) -> tuple[float, float | None]:
    """Median seconds per step over `steps` (after `warmup`), and peak memory in MB (CUDA only)."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def bare_step_fn(model: MaskSubModel, optimizer: torch.optim.Optimizer, x, y, masksub: bool, dtype):
    """The reference: the MaskSub step written plainly, with no engine around it."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        (loss * (0.5 if masksub else 1.0)).backward()
        if masksub:
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                out_sub = model(x, sub=True)
            target = F.softmax(out.detach().float(), dim=-1)
            loss_sub = torch.sum(-target * F.log_softmax(out_sub.float(), dim=-1), dim=-1).mean()
            (loss_sub * 0.5).backward()
        optimizer.step()
    return step


def bench_model(model: str, args: argparse.Namespace, device: torch.device, out_dir: Path) -> list[Record]:
    dist = DistInfo(device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    records = []

    def record(mode: str, seconds: float, peak: float | None) -> None:
        records.append(Record(model, mode, args.batch_size, args.batch_size / seconds, 1000 * seconds, peak,
                              str(device), args.precision, args.compile, args.compile_mode if args.compile else ""))

    for masksub in (False, True):
        settings = settings_for(model, args, masksub)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        # one model at a time on the device, so each mode's peak memory is its own
        torch.manual_seed(0)
        bare = prepare_model(settings, dist).train()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        x = x.to(memory_format=torch.channels_last if channels_last(settings, bare, dist) else torch.contiguous_format)
        bare_opt = build_optimizer(bare, settings.recipe.optimizer, settings.recipe.optimizer.lr)
        record("bare_masksub" if masksub else "bare_baseline",
               *_time(bare_step_fn(bare, bare_opt, x, y, masksub, dtype), device, args.warmup, args.steps))
        del bare, bare_opt
        _free(device)
        torch.manual_seed(0)
        parts = build_parts(settings, dist, out_dir / f"{model}-{int(masksub)}")
        parts.model.train()
        ours = functools.partial(run_batch, parts, TrainState(), x, y, LossMeter(device), 10**9)
        record("masksub" if masksub else "baseline", *_time(ours, device, args.warmup, args.steps))
        parts.sinks.close()
        del parts, ours
        _free(device)
    return records


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(records: list[Record]) -> str:
    by = {(r.model, r.mode): r for r in records}
    lines = ["model     mode           img/s    step ms  peak MB   | masksub/baseline  ours/bare",
             "-" * 86]
    for model in dict.fromkeys(r.model for r in records):
        for mode in MODES:
            r = by[(model, mode)]
            peak = f"{r.peak_mem_mb:8.0f}" if r.peak_mem_mb is not None else "       -"
            ratio = ""
            if mode == "masksub":
                base = by[(model, "baseline")]
                ratio = f"| {r.img_per_s / base.img_per_s:5.2f}x speed"
                if r.peak_mem_mb is not None and base.peak_mem_mb:
                    ratio += f", mem {r.peak_mem_mb / base.peak_mem_mb:4.2f}x"
            if not mode.startswith("bare"):
                bare = by[(model, "bare_" + mode)]
                ratio += f"  ours/bare {r.img_per_s / bare.img_per_s:5.3f}"
            lines.append(f"{model:9} {mode:13} {r.img_per_s:8.1f} {r.step_ms:9.1f} {peak}  {ratio}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 128 on CUDA (256 for vit_s16), 16 on CPU")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 30 CUDA, 8 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 10 CUDA, 2 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (ViT/Swin block by block)")
    parser.add_argument("--compile-mode", default="model", choices=("model", "blocks"),
                        help="model: one graph per branch; blocks: ViT/Swin block by block")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records instead of the table")
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if on_cuda else "fp32")
    args.steps = args.steps or (30 if on_cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 2)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--loader" in argv or "--train" in argv:  # the input pipeline, or a preset through train()
        from .loader import main as loader_main

        return loader_main(argv)
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    records: list[Record] = []
    fixed_batch = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            args.batch_size = fixed_batch or (16 if device.type == "cpu" else 256 if model == "vit_s16" else 128)
            records += bench_model(model, args, device, Path(tmp))
            print(f"done {model}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=1))
    else:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{name}, torch {torch.__version__}, {args.precision}, compile={args.compile}, "
              f"median of {args.steps} steps after {args.warmup} warm-up")
        print(format_table(records))


if __name__ == "__main__":
    main()
