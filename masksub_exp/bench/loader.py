"""Input-pipeline throughput, and a preset end to end through `train()`.

    python -m masksub_exp.bench --loader [--images 400] [--workers 2] [--recipes deit3_224,...] [--repeat 3] [--json]
    python -m masksub_exp.bench --train experiment=deit3/vit_s_400ep [key=value ...] [--images 512] [--resident]

`--loader` writes realistic JPEGs (500x375 or 375x500, ~90 KB, smooth multi-scale random content plus
grain, quality 92; nothing is downloaded) and measures, per recipe's training pipeline: decode + transforms
on one core (one process, one thread), then the run's real train loader (`build_loaders`: sampler, workers,
collate) with N workers. Variants: `full` (every file decoded in full: today's default), `draft`
(data.jpeg_draft=true), `prepared` (a `masksub_exp.tools.prepare --short-side 288` copy), `dali` (DALI's CPU
operators, N threads; on a GPU it decodes there instead). From the per-core rate it prints the CPU cores one
GPU needs to feed each model at the GPU rates measured in benchmarks/RESULTS.md.

`--train` runs a preset through the real loop (loader, logging, checkpoints) and prints img/s and
data_wait_frac from its metrics.jsonl; with data.name=imagefolder and no data.root it writes the JPEGs first.
`--resident` feeds it one batch kept on the device instead of its loader: the loop's own speed, to set against
the step bench's on a resident batch.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import AugConfig, DataConfig, RecipeConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
# recipe variant -> (conf/recipe file, image size, [(model row in benchmarks/RESULTS.md, H200 bf16 img/s)])
RECIPES: dict[str, tuple[str, int, list[tuple[str, float]]]] = {
    "deit3_224": ("deit3", 224, [("ViT-S/16 MaskSub", 3581), ("ViT-S/16 baseline", 5563),
                                 ("ViT-S/16 MaskSub compiled", 5387), ("ViT-S/16 baseline compiled", 8295)]),
    "deit3_192": ("deit3", 192, [("ViT-B/16 MaskSub compiled (224)", 2084),
                                 ("ViT-B/16 baseline compiled (224)", 3223)]),
    "swin_224": ("swin", 224, [("Swin-T MaskSub", 1045), ("Swin-T baseline", 2126)]),
    "rsb_224": ("rsb", 224, [("ResNet-50 MaskSub", 2112), ("ResNet-50 baseline", 4001)]),
}
VARIANTS = ("full", "draft", "prepared", "dali")


def natural_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth random structure at five scales plus grain: compresses like a photo (~90 KB at quality 92)."""
    acc = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((4, 60), (12, 40), (40, 25), (125, 14), (250, 8)):
        small = rng.normal(0, 1, (max(2, cells * height // width), cells, 3))
        small8 = (small * 40 + 128).clip(0, 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small8).resize((width, height), Image.BICUBIC), np.float32) - 128
        acc += up * amp / 40
    acc += rng.normal(0, 7, acc.shape)
    return Image.fromarray((acc + 128 + rng.uniform(-40, 40, 3)).clip(0, 255).astype(np.uint8))


def make_jpeg_folder(root: Path, train: int, val: int = 0, classes: int = 4, seed: int = 0, quality: int = 92,
                     size: tuple[int, int] = (500, 375)) -> Path:
    """An ImageFolder (train/, val/) of `train` + `val` JPEGs; a quarter of them portrait. Re-uses what exists."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            path = root / split / f"c{i % classes}" / f"{split}_{i:05d}.jpg"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            w, h = size if i % 4 else size[::-1]
            natural_image(rng, w, h).save(path, "JPEG", quality=quality)
    return root


def recipe_aug(recipe: str) -> AugConfig:
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), OmegaConf.load(CONF / "recipe" / f"{recipe}.yaml"))
    return OmegaConf.to_object(cfg).aug


def data_config(root: Path, size: int, workers: int, **kw: Any) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), num_classes=1000, in_chans=3, img_size=size,
                      mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], num_workers=workers, **kw)


def one_core_rate(data: DataConfig, aug: AugConfig, images: int) -> float:
    """Images per CPU-second of decode + the recipe's train transforms, in this thread with one torch thread
    (CPU time, not wall time: other load on the machine does not distort it)."""
    from ..data import build_datasets

    train, _ = build_datasets(data, aug, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train[0]
        n = min(images, len(train))
        start = time.thread_time()
        for i in range(n):
            train[i]
        return n / (time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its exited, waited-for children (loader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def loader_rate(data: DataConfig, aug: AugConfig, batch_size: int, epochs: int = 2) -> tuple[float, float]:
    """Through the run's own train loader (sampler, workers or DALI threads, collate): wall img/s after the first
    batch, and images per CPU-second over everything the loader used (workers' time counted once they exit)."""
    from ..data import build_loaders

    cpu_start = _cpu_seconds()
    loaders = build_loaders(data, aug, batch_size=batch_size, seed=0)
    count, timed, start = 0, 0, None
    for epoch in range(epochs):
        loaders.sampler.set_epoch(epoch)
        for x, _ in loaders.train:
            count += len(x)
            if start is None:
                start = time.perf_counter()  # after the first batch: workers started, pipeline built
                continue
            timed += len(x)
    wall = time.perf_counter() - start if start else float("nan")
    del loaders, x
    gc.collect()  # shuts the workers down and waits for them, so their CPU time is counted
    return (timed / wall if timed else float("nan")), count / (_cpu_seconds() - cpu_start)


def decode_rate(root: Path, images: int) -> float:
    """Images per CPU-second of a full PIL decode to RGB."""
    files = sorted((root / "train").rglob("*.jpg"))[:images]
    start = time.thread_time()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB")
    return len(files) / (time.thread_time() - start)


def prepared_copy(src: Path, dst: Path, short_side: int = 288) -> Path:
    from ..tools.prepare import prepare

    prepare(src, dst, short_side=short_side, workers=1)
    return dst


def bench_loader(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root or tempfile.mkdtemp(prefix="masksub-jpegs-"))
    make_jpeg_folder(root, args.images, 8, classes=8)
    files = list((root / "train").rglob("*.jpg"))
    result: dict[str, Any] = {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "images": len(files), "workers": args.workers,
        "batch_size": args.batch_size, "repeat": args.repeat,
        "mean_file_kb": statistics.mean(f.stat().st_size for f in files) / 1e3,
        "decode_img_per_cpu_s": decode_rate(root, args.images), "rows": []}
    prepared = None
    if "prepared" in args.variants:
        prepared = prepared_copy(root, root.with_name(root.name + "-288"))
        result["prepared_mean_file_kb"] = statistics.mean(
            f.stat().st_size for f in (prepared / "train").rglob("*.jpg")) / 1e3
    for name in args.recipes:
        recipe, size, gpu_rates = RECIPES[name]
        aug = recipe_aug(recipe)
        for variant in args.variants:
            if variant == "dali" and not dali_available():
                continue
            folder = prepared if variant == "prepared" else root
            kw = {"jpeg_draft": True} if variant == "draft" else {"backend": "dali"} if variant == "dali" else {}
            data = data_config(folder, size, args.workers, **kw)
            row: dict[str, Any] = {"recipe": name, "variant": variant, "img_size": size}
            if variant != "dali":  # best of --repeat: contention from other load only ever slows a measurement
                row["img_per_cpu_s_1core"] = max(one_core_rate(data, aug, args.images) for _ in range(args.repeat))
            runs = [loader_rate(data, aug, args.batch_size) for _ in range(args.repeat)]
            row["loader_img_per_s"], row["loader_img_per_cpu_s"] = max(r[0] for r in runs), max(r[1] for r in runs)
            # cores one GPU needs: its img/s over what one core of the real loader delivers (collate, IPC included)
            row["cores_per_gpu"] = {label: rate / row["loader_img_per_cpu_s"] for label, rate in gpu_rates}
            result["rows"].append(row)
            print(f"done {name} {variant}", file=sys.stderr, flush=True)
    return result


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def format_loader(result: dict[str, Any]) -> str:
    lines = [f"{result['cpu']} ({result['cores']} cores); {result['images']} JPEGs, mean {result['mean_file_kb']:.0f}"
             f" KB; full decode {result['decode_img_per_cpu_s']:.0f} img per CPU-second; loader: "
             f"{result['workers']} workers, batch {result['batch_size']}",
             "img/CPU-s: images per CPU-second (one core busy for one second); wall: img/s on this machine now",
             "recipe     variant   1-core img/CPU-s  loader img/CPU-s  loader wall img/s | cores per GPU"]
    for r in result["rows"]:
        one = f"{r['img_per_cpu_s_1core']:16.0f}" if "img_per_cpu_s_1core" in r else " " * 15 + "-"
        cores = ", ".join(f"{k} {v:.1f}" for k, v in r["cores_per_gpu"].items())
        lines.append(f"{r['recipe']:10} {r['variant']:8} {one} {r['loader_img_per_cpu_s']:17.0f} "
                     f"{r['loader_img_per_s']:18.0f} | {cores}")
    return "\n".join(lines)


class ResidentBatches:
    """The training loader's stand-in for `--resident`: one batch, already on the device, served as many times as
    the real loader has batches (a fresh copy each time: mixup works in place)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batches: int) -> None:
        self.x, self.y, self.batches = x, y, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.batches):
            yield self.x.clone(), self.y.clone()


@contextlib.contextmanager
def resident_training_data() -> Iterator[None]:
    """train() with its training loader swapped for ResidentBatches of the loader's own first batch: the loop,
    model, recipe, logging and checkpoints are the preset's, the input costs nothing. The engine has no such
    option (a real run never wants it), so the bench swaps `build.build_loaders` for the duration of the run."""
    from .. import build

    real = build.build_loaders

    def loaders_with_a_resident_batch(*args: Any, device: torch.device | None = None, **kwargs: Any) -> Any:
        loaders = real(*args, device=device, **kwargs)
        x, y = next(iter(loaders.train))
        loaders.train = ResidentBatches(x.to(device), y.to(device), len(loaders.train))
        return loaders

    build.build_loaders = loaders_with_a_resident_batch
    try:
        yield
    finally:
        build.build_loaders = real


def bench_train(overrides: list[str], images: int, out: Path | None, resident: bool = False) -> dict[str, Any]:
    """A preset through the real loop; img/s and data_wait_frac from its metrics (first log window dropped).
    `resident`: its training data is one batch kept on the device (resident_training_data)."""
    from hydra import compose, initialize_config_dir

    from ..train import train

    work = Path(tempfile.mkdtemp(prefix="masksub-bench-train-"))
    run_dir = out or work / "run"
    extra = [f"paths.output_dir={run_dir}", f"paths.log_dir={run_dir.parent}"]
    if not any(o.startswith("train.resume=") for o in overrides):
        extra.append("train.resume=never")  # measure a fresh run, never a resumed or finished one
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides + extra)
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        cfg.data.root = str(make_jpeg_folder(work / "jpegs", images, max(8, images // 16), classes=8))
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with resident_training_data() if resident else contextlib.nullcontext():
        summary = train(cfg)
    wall = time.perf_counter() - start
    gc.collect()  # the loader's workers exit, so their CPU time is counted
    cores = (_cpu_seconds() - cpu_start) / wall
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in lines if r.get("kind") == "train"][1:] or [r for r in lines if r.get("kind") == "train"]
    return {"overrides": overrides, "steps": summary["step"], "wall_s": wall, "batch_plan": summary.get("batch_plan"),
            "img_per_s": statistics.mean(r["img_per_s"] for r in steady) if steady else float("nan"),
            "data_wait_frac": statistics.mean(r["data_wait_frac"] for r in steady) if steady else float("nan"),
            "log_windows": len(steady), "cpu_cores_used": cores, "run_dir": str(run_dir)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m masksub_exp.bench --loader|--train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", action="store_true", help="the input pipeline per recipe")
    parser.add_argument("--train", action="store_true", help="the remaining key=value arguments are Hydra overrides")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"from {', '.join(RECIPES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--repeat", type=int, default=1, help="measure each rate N times, keep the best")
    parser.add_argument("--root", default=None, help="JPEG folder to (re)use; default: a new temporary one")
    parser.add_argument("--out", default=None, help="--train: the run folder")
    parser.add_argument("--resident", action="store_true",
                        help="--train: the training data is one batch kept on the device (the loop's own speed)")
    parser.add_argument("--json", action="store_true")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.recipes, args.variants = args.recipes.split(","), args.variants.split(",")
    bad = [r for r in args.recipes if r not in RECIPES] + [v for v in args.variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown recipe(s)/variant(s) {bad}")
    if rest and not args.train:
        parser.error(f"unrecognised arguments {rest} (Hydra overrides go with --train)")
    return args, rest


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.train:
        result = bench_train(overrides, args.images, Path(args.out) if args.out else None, args.resident)
        print(json.dumps(result, indent=1) if args.json else
              f"{' '.join(overrides)}: {result['img_per_s']:.1f} img/s, data_wait_frac {result['data_wait_frac']:.3f} "
              f"({result['steps']} steps, {result['log_windows']} log windows, "
              f"{result['cpu_cores_used']:.1f} CPU cores on average; {result['batch_plan']})")
        return
    result = bench_loader(args)
    print(json.dumps(result, indent=1) if args.json else format_loader(result))


if __name__ == "__main__":
    main()
