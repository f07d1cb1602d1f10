"""Training-step throughput, peak memory and MFU: MaskSub off vs on, our loop vs a bare loop.

    python -m masksub_exp.bench [--device cuda] [--models vit_s16,vit_b16,swin_t,resnet50|deit3/vit_s_400ep,...]
                                [--batch-size N] [--modes baseline,masksub] [--compile] [--json]
    python -m masksub_exp.bench --loader ...     # the input pipeline per recipe (masksub_exp/bench/loader.py)
    python -m masksub_exp.bench --train experiment=... [key=value ...]   # a preset end to end through train()

Four modes per model, measured side by side in one process on one resident synthetic batch:
`baseline` and `masksub` run the engine's own per-batch hot path (`engine.run_batch`: schedule,
step, EMA hook, loss meter, periodic logging); `bare_baseline` and `bare_masksub` run a ~20-line
loop doing the same forward/backward/step with nothing around it. Data loading is excluded.
A model named like a preset (`deit3/vit_s_400ep`) is that preset's model, recipe (loss, mixup, EMA) and
optimizer on a synthetic batch. MFU: the step's model FLOPs (counted once on an eager copy: every matmul,
convolution and attention of the forward and backward passes, main and sub-branch) times the steps per second,
over the card's dense bf16/fp16 peak (PEAK_TFLOPS; '-' on a CPU, in fp32 or on an unlisted card).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..build import build_parts, channels_last, prepare_model
from ..checkpoints import TrainState
from ..config import (
    DataConfig,
    MaskSubConfig,
    ModelConfig,
    OptimizerConfig,
    RecipeConfig,
    Settings,
    TrainConfig,
    register_configs,
    to_settings,
)
from ..distributed import DistInfo, pick_device
from ..engine import LossMeter, run_batch
from ..models import MaskSubModel, build_model
from ..optim import build_optimizer

MODELS = {
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "resnet50": "resnet50",
}
MODES = ("bare_baseline", "baseline", "bare_masksub", "masksub")
# dense (no sparsity) bf16 = fp16 tensor-core peak in TFLOP/s, by a piece of torch.cuda.get_device_name();
# the first match wins, so the PCIe / NVL H100s come before the SXM one ("NVIDIA H100 80GB HBM3")
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0), ("H800", 989.0),
               ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("B200", 2250.0))


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
    flops_per_img: float | None = None  # model FLOPs of one training step / batch size
    mfu: float | None = None  # flops_per_img * img_per_s / the card's peak


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The card's dense bf16/fp16 peak; None off the table, or for fp32 (whose peak is another, lower one)."""
    if precision not in ("bf16", "fp16", "auto"):
        return None
    return next((tflops for key, tflops in PEAK_TFLOPS if key in device_name), None)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that `fn()` runs through matmuls, convolutions and attention (torch's FlopCounterMode; forward and
    backward; elementwise ops and the optimizer are not counted, as in the usual MFU definition)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mfu(flops_per_img: float | None, img_per_s: float, peak: float | None) -> float | None:
    if flops_per_img is None or peak is None:
        return None
    return flops_per_img * img_per_s / (peak * 1e12)


def preset_settings(name: str, args: argparse.Namespace, masksub: bool) -> Settings:
    """A preset's model, recipe and optimizer with the bench's batch, precision and a synthetic data set."""
    from hydra import compose, initialize_config_dir

    from .loader import CONF

    overrides = [f"experiment={name}", f"masksub={'mask' if masksub else 'off'}", "data=synthetic",
                 "data.num_classes=1000", f"data.img_size={args.img_size}",
                 f"data.synthetic_train_size={args.batch_size}", "data.synthetic_val_size=1",
                 f"train.batch_size={args.batch_size}", f"train.precision={args.precision}",
                 f"train.device={args.device}", "train.log_every=50", "train.progress=false", "train.epochs=1",
                 f"train.compile={str(args.compile).lower()}", f"train.compile_mode={args.compile_mode}",
                 "model.checkpoint=null",
                 # build_parts gets its own run folder; this only resolves ${run_folder:} outside a Hydra run
                 f"paths.output_dir={tempfile.gettempdir()}", f"paths.log_dir={tempfile.gettempdir()}", *args.set]
    from ..train import register_resolvers

    register_configs()  # conf/train.yaml names the schema first
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_settings(compose(config_name="train", overrides=overrides))


def settings_for(model: str, args: argparse.Namespace, masksub: bool) -> Settings:
    if "/" in model:
        return preset_settings(model, args, masksub)
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


def forward_backward(model: MaskSubModel, x: torch.Tensor, y: torch.Tensor, masksub: bool, dtype) -> None:
    """The MaskSub step's forward and backward passes written plainly (main branch, then the sub-branch)."""
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


def bare_step_fn(model: MaskSubModel, optimizer: torch.optim.Optimizer, x, y, masksub: bool, dtype):
    """The reference: the MaskSub step written plainly, with no engine around it."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, x, y, masksub, dtype)
        optimizer.step()
    return step


def step_flops_per_img(settings: Settings, x: torch.Tensor, y: torch.Tensor, dtype) -> float:
    """Model FLOPs of one training step per image, counted on an eager copy of the model (a compiled one runs
    its kernels below the dispatcher, where FlopCounterMode sees nothing); the sub-branch at its masking ratio."""
    torch.manual_seed(0)
    model = build_model(settings.model, settings.data, settings.masksub).to(x.device).train()
    return count_flops(functools.partial(forward_backward, model, x, y, settings.masksub.enabled, dtype)) / len(x)


def bench_model(model: str, args: argparse.Namespace, device: torch.device, out_dir: Path) -> list[Record]:
    dist = DistInfo(device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_tflops(name, args.precision) if device.type == "cuda" else None
    modes = args.modes.split(",")
    records = []

    def record(mode: str, seconds: float, peak_mem: float | None, flops: float) -> None:
        rate = args.batch_size / seconds
        records.append(Record(model, mode, args.batch_size, rate, 1000 * seconds, peak_mem, str(device),
                              args.precision, args.compile, args.compile_mode if args.compile else "", flops,
                              mfu(flops, rate, peak)))

    for masksub in (False, True):
        mode = "masksub" if masksub else "baseline"
        if mode not in modes and "bare_" + mode not in modes:
            continue
        settings = settings_for(model, args, masksub)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        flops = step_flops_per_img(settings, x, y, dtype)
        _free(device)
        # one model at a time on the device, so each mode's peak memory is its own
        torch.manual_seed(0)
        bare = prepare_model(settings, dist).train()
        x = x.to(memory_format=torch.channels_last if channels_last(settings, bare, dist) else torch.contiguous_format)
        if "bare_" + mode in modes:
            bare_opt = build_optimizer(bare, settings.recipe.optimizer, settings.recipe.optimizer.lr)
            record("bare_" + mode, *_time(bare_step_fn(bare, bare_opt, x, y, masksub, dtype), device, args.warmup,
                                          args.steps), flops)
            del bare_opt
        del bare
        _free(device)
        if mode in modes:
            torch.manual_seed(0)
            parts = build_parts(settings, dist, out_dir / f"{model.replace('/', '_')}-{int(masksub)}")
            parts.model.train()
            ours = functools.partial(run_batch, parts, TrainState(), x, y, LossMeter(device), 10**9)
            record(mode, *_time(ours, device, args.warmup, args.steps), flops)
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
    width = max([9, *(len(r.model) for r in records)])  # preset names are longer than the short model names
    lines = [f"{'model':{width}} mode           img/s    step ms  peak MB  GFLOP/img    MFU "
             "| masksub/baseline  ours/bare", "-" * (92 + width)]
    for model in dict.fromkeys(r.model for r in records):
        for mode in MODES:
            r = by.get((model, mode))
            if r is None:  # a mode left out with --modes
                continue
            peak = f"{r.peak_mem_mb:8.0f}" if r.peak_mem_mb is not None else "       -"
            flops = f"{r.flops_per_img / 1e9:10.2f}" if r.flops_per_img else "         -"
            util = f"{100 * r.mfu:5.1f}%" if r.mfu is not None else "     -"
            ratio = ""
            base = by.get((model, "baseline"))
            if mode == "masksub" and base is not None:
                ratio = f"| {r.img_per_s / base.img_per_s:5.2f}x speed"
                if r.peak_mem_mb is not None and base.peak_mem_mb:
                    ratio += f", mem {r.peak_mem_mb / base.peak_mem_mb:4.2f}x"
            bare = by.get((model, "bare_" + mode))
            if not mode.startswith("bare") and bare is not None:
                ratio += f"  ours/bare {r.img_per_s / bare.img_per_s:5.3f}"
            lines.append(f"{model:{width}} {mode:13} {r.img_per_s:8.1f} {r.step_ms:9.1f} {peak} {flops} {util}  "
                         f"{ratio}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        prog="python -m masksub_exp.bench", description=__doc__.split("\n\n")[0], epilog=_other_modes(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_argument_group("modes (the default: the training step on a resident synthetic batch)")
    modes.add_argument("--loader", action="store_true",
                       help="the input pipeline per recipe, from JPEGs it writes (its options below)")
    modes.add_argument("--train", action="store_true",
                       help="a preset end to end through train(): --train experiment=NAME [key=value ...] "
                            "(its options below)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}, or presets (e.g. deit3/vit_s_400ep)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for the preset models (repeatable), e.g. --set model=vit_micro")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 128 on CUDA (256 for ViT-S), 16 on CPU")
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
    unknown = [m for m in args.models.split(",") if m not in MODELS and "/" not in m]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)} or a preset (deit3/vit_s_400ep)")
    bad_modes = [m for m in args.modes.split(",") if m not in MODES]
    if bad_modes:
        parser.error(f"unknown mode(s) {bad_modes}; choose from {', '.join(MODES)}")
    return args


def _other_modes() -> str:
    """The --loader / --train options (masksub_exp/bench/loader.py parses them), for one --help that shows all."""
    from .loader import build_parser

    text = build_parser().format_help()
    return "--loader / --train " + text[text.index("options:"):]


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
            vit_s = model == "vit_s16" or "vit_s" in model  # a preset such as deit3/vit_s_400ep
            args.batch_size = fixed_batch or (16 if device.type == "cpu" else 256 if vit_s else 128)
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
