"""Training img/s from JPEG files on one GPU: ViT-S/16 and ViT-B/16, baseline and MaskSub, bf16, through the real
loop (`train()`: loader, logging, final eval, checkpoints), with the input from
  full      today's torch loader, every JPEG decoded in full, 8 workers
  draft     the same with data.jpeg_draft=true, 8 workers
  prepared  a `masksub_exp.tools.prepare --short-side 288` copy, 8 workers
  dali      data.backend=dali (GPU decoding), 4 CPU threads; skipped when DALI is not importable
and the same models on one resident synthetic batch (`masksub_exp.bench`) as the reference. Run by
benchmarks/gpu_loader.sh; `--dry-run` does all of it on the CPU at toy sizes (the test suite runs that).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from masksub_exp.bench import step as bench  # noqa: E402
from masksub_exp.bench.loader import bench_train, dali_available, natural_image  # noqa: E402
from masksub_exp.tools.prepare import prepare  # noqa: E402

PRESETS = {"vit_s16": "deit3/vit_s_400ep", "vit_b16": "deit3/vit_b_400ep"}
RESULTS_MD = {("vit_s16", "baseline"): 5563, ("vit_s16", "masksub"): 3581,  # H200, eager, bf16, 224 px
              ("vit_b16", "baseline"): 2556, ("vit_b16", "masksub"): 1654}
VARIANTS = {"full": ["data.num_workers=8"], "draft": ["data.num_workers=8", "data.jpeg_draft=true"],
            "prepared": ["data.num_workers=8"], "dali": ["data.num_workers=4", "data.backend=dali"]}


def _write(item: tuple[str, int, int, int]) -> None:
    path, seed, w, h = item
    if not Path(path).exists():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        natural_image(np.random.default_rng(seed), w, h).save(path, "JPEG", quality=92)


def write_jpegs(root: Path, train: int, val: int, size: tuple[int, int], workers: int) -> None:
    items = []
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            w, h = size if i % 4 else size[::-1]
            items.append((str(root / split / f"c{i % 100:03d}" / f"{split}_{i:05d}.jpg"), i + (split == "val") * 10**6,
                          w, h))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, items, chunksize=32))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script, measures nothing")
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for gpu_loader.json")
    parser.add_argument("--work", default="/tmp/masksub-gpu-loader", help="JPEGs and run folders (local disk)")
    parser.add_argument("--images", type=int, default=None, help="training JPEGs (default 4096; dry run 48)")
    parser.add_argument("--models", default=None, help="default vit_s16,vit_b16 (dry run: vit_s16)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    dry = args.dry_run
    work = Path(args.work)
    images = args.images or (24 if dry else 4096)
    batch = 4 if dry else 256
    steps, log_every = (3, 1) if dry else (max(8, images // batch - 1), 3)
    cpus = os.cpu_count() or 1
    started = time.perf_counter()

    shutil.rmtree(work / "runs", ignore_errors=True)  # fresh run folders: a left-over checkpoint would resume
    jpegs = work / "jpegs"
    write_jpegs(jpegs, images, 8 if dry else 128, (96, 72) if dry else (500, 375), min(cpus, 16))
    prepared = work / "jpegs-288"
    manifest = prepare(jpegs, prepared, short_side=48 if dry else 288, workers=min(cpus, 16))
    timings = {"jpegs_and_prepare_s": time.perf_counter() - started}
    print(f"{images} JPEGs, {manifest['source_bytes'] / images / 1e3:.0f} KB each; prepared copy "
          f"{manifest['bytes'] / images / 1e3:.0f} KB each ({timings['jpegs_and_prepare_s']:.0f} s)", flush=True)

    device = "cpu" if dry else "cuda"
    models = (args.models or ("vit_s16" if dry else "vit_s16,vit_b16")).split(",")
    synthetic = {}
    ref_args = ["--device", device, "--models", ",".join(models), "--json", "--steps", "1" if dry else "20",
                "--warmup", "0" if dry else "5", "--batch-size", "2" if dry else str(batch)]
    if dry:  # the script's plumbing, not a measurement: a 5M-parameter ViT stands in for the reference's ViT-S
        ref_args += ["--img-size", "32"]
        bench.MODELS.update({name: "vit_tiny_patch16_224" for name in models})
    step_start = time.perf_counter()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        bench.main(ref_args)
    for r in json.loads(buffer.getvalue()):
        if not r["mode"].startswith("bare"):
            synthetic[(r["model"], r["mode"])] = r["img_per_s"]

    timings["synthetic_reference_s"] = time.perf_counter() - step_start
    variants = [v for v in args.variants.split(",") if v != "dali" or dali_available()]
    skipped = [v for v in args.variants.split(",") if v not in variants]
    rows = []
    for model in models:
        for mode in ("baseline", "masksub"):
            for variant in variants:
                folder = prepared if variant == "prepared" else jpegs
                overrides = [f"experiment={PRESETS[model]}", f"data.root={folder}",
                             "data.img_size=224" if not dry else "data.img_size=32", "data.num_classes=100",
                             f"train.batch_size={batch}", f"train.max_steps={steps}", f"train.log_every={log_every}",
                             "train.epochs=100", "train.eval_every=100", "train.progress=false",
                             f"train.device={device}", f"masksub={'mask' if mode == 'masksub' else 'off'}",
                             *VARIANTS[variant]]
                if dry:
                    overrides += ["model=vit_micro", "data.num_workers=1"]
                run = bench_train(overrides, images, work / "runs" / f"{model}-{mode}-{variant}")
                reference = synthetic.get((model, mode))
                rows.append({"model": model, "mode": mode, "variant": variant, "img_per_s": run["img_per_s"],
                             "data_wait_frac": run["data_wait_frac"], "cpu_cores_used": run["cpu_cores_used"],
                             "synthetic_img_per_s": reference, "vs_synthetic": run["img_per_s"] / reference
                             if reference else None, "results_md_img_per_s": RESULTS_MD.get((model, mode)),
                             "steps": run["steps"], "wall_s": run["wall_s"]})
                print(f"{model} {mode} {variant}: {run['img_per_s']:.0f} img/s, wait {run['data_wait_frac']:.2f}, "
                      f"{run['cpu_cores_used']:.1f} cores ({run['wall_s']:.0f} s)", flush=True)
    timings["total_s"] = time.perf_counter() - started
    result = {"device": _device_name(dry), "cpus": cpus, "images": images, "batch_size": batch, "steps": steps,
              "dry_run": dry, "skipped": skipped, "rows": rows, "timings": timings, "prepare": manifest}
    print(table(result))
    if skipped:
        print(f"skipped (not importable here): {', '.join(skipped)}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_loader.json").write_text(json.dumps(result, indent=1) + "\n")


def table(result: dict) -> str:
    lines = [f"{result['device']}, {result['cpus']} CPUs; batch {result['batch_size']}, {result['steps']} steps a run",
             "model    mode      input     img/s  data_wait  CPU cores  synthetic img/s  vs synthetic"]
    for r in result["rows"]:
        ref = f"{r['synthetic_img_per_s']:15.0f}  {r['vs_synthetic']:11.2f}" if r["synthetic_img_per_s"] else ""
        lines.append(f"{r['model']:8} {r['mode']:9} {r['variant']:8} {r['img_per_s']:6.0f} {r['data_wait_frac']:10.2f} "
                     f"{r['cpu_cores_used']:10.1f}  {ref}")
    return "\n".join(lines)


def _device_name(dry: bool) -> str:
    import torch

    return "CPU (dry run)" if dry else torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
