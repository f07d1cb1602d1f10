"""Training img/s on one GPU through the real loop (`train()`: loader, logging, final eval, checkpoints), per preset
(ViT-S/16 and ViT-B/16 DeiT-III, Swin-T, ResNet-50 RSB), baseline and MaskSub, bf16, with the input from
  resident   one batch kept on the device (the loop's own cost: no input pipeline at all)
  full       today's torch loader, every JPEG decoded in full, 8 workers
  pil4/pil14 the same with 4 / 14 workers
  draft      data.jpeg_draft=true, 8 workers
  prepared   a `masksub_exp.tools.prepare --short-side 288` copy, 8 workers
  dali       data.backend=dali (GPU decoding), 4 CPU threads; skipped when DALI is not importable
against the same presets on one resident synthetic batch (`masksub_exp.bench`, the reference) and, with
--compiled, compiled models on that batch with their MFU. Runs start in the order given and none starts after
--deadline-s; the ones left are listed. Run by benchmarks/gpu_loader.sh and benchmarks/gpu_speed.sh;
`--dry-run` does all of it on the CPU at toy sizes (the test suite runs that).
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

PRESETS = {"vit_s16": "deit3/vit_s_400ep", "vit_b16": "deit3/vit_b_400ep", "swin_t": "swin/t",
           "resnet50": "rsb/resnet50"}
RESULTS_MD = {("vit_s16", "baseline"): 5563, ("vit_s16", "masksub"): 3581,  # H200, eager, bf16, 224 px (timm models)
              ("vit_b16", "baseline"): 2556, ("vit_b16", "masksub"): 1654,
              ("swin_t", "baseline"): 2126, ("swin_t", "masksub"): 1045,
              ("resnet50", "baseline"): 4001, ("resnet50", "masksub"): 2112}
VARIANTS = {"resident": ["data.num_workers=0"], "full": ["data.num_workers=8"],
            "pil4": ["data.num_workers=4"], "pil14": ["data.num_workers=14"],
            "draft": ["data.num_workers=8", "data.jpeg_draft=true"], "prepared": ["data.num_workers=8"],
            "dali": ["data.num_workers=4", "data.backend=dali"]}


def _write(item: tuple[str, int, int, int, int]) -> None:
    path, seed, w, h, quality = item
    if not Path(path).exists():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        natural_image(np.random.default_rng(seed), w, h).save(path, "JPEG", quality=quality)


def write_jpegs(root: Path, train: int, val: int, size: tuple[int, int], workers: int, quality: int = 92) -> None:
    items = []
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            w, h = size if i % 4 else size[::-1]
            items.append((str(root / split / f"c{i % 100:03d}" / f"{split}_{i:05d}.jpg"), i + (split == "val") * 10**6,
                          w, h, quality))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, items, chunksize=32))


def reference(device: str, models: list[str], batch: int, dry: bool, compiled: bool = False) -> list[dict]:
    """`masksub_exp.bench` records (baseline and MaskSub) on one resident synthetic batch: the presets eager, or
    with `compiled` the timm models compiled (the figures of benchmarks/RESULTS.md's compiled rows)."""
    args = ["--device", device, "--modes", "baseline,masksub", "--json", "--steps", "1" if dry else "20",
            "--warmup", "0" if dry else "5", "--batch-size", str(batch)]
    names = [PRESETS[m] for m in models] if dry or not compiled else models
    if dry:  # the script's plumbing, not a measurement: each preset with the micro ViT, at 32 px
        args += ["--img-size", "32", "--set", "model=vit_micro"]
    if compiled:
        args.append("--compile")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        bench.main(args + ["--models", ",".join(names)])
    records = json.loads(buffer.getvalue())
    short = {v: k for k, v in PRESETS.items()}
    for r in records:
        r["model"] = short.get(r["model"], r["model"])
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script, measures nothing")
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for the JSON and the table")
    parser.add_argument("--name", default="gpu_loader", help="file names in --out: NAME.json, NAME.md")
    parser.add_argument("--work", default="/tmp/masksub-gpu-loader", help="JPEGs and run folders (local disk)")
    parser.add_argument("--images", type=int, default=None, help="training JPEGs (default 4096; dry run 24)")
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality (92: ~85 KB a file, 95: ~115 KB)")
    parser.add_argument("--models", default=None, help=f"from {', '.join(PRESETS)}; default vit_s16,vit_b16 "
                                                      "(dry run: vit_s16)")
    parser.add_argument("--variants", default="full,draft,prepared,dali", help=f"in this order, from "
                                                                                f"{', '.join(VARIANTS)}")
    parser.add_argument("--compiled", default="", help="also these timm models compiled on the resident batch "
                                                       "(bench --compile), e.g. vit_b16")
    parser.add_argument("--compiled-batch", type=int, default=128)
    parser.add_argument("--deadline-s", type=float, default=None, help="no run starts after this many seconds")
    args = parser.parse_args(argv)
    dry = args.dry_run
    variants_asked = args.variants.split(",")
    bad = [v for v in variants_asked if v not in VARIANTS]
    models = (args.models or ("vit_s16" if dry else "vit_s16,vit_b16")).split(",")
    bad += [m for m in models if m not in PRESETS]
    if bad:
        parser.error(f"unknown variant(s) or model(s) {bad}")
    work = Path(args.work)
    images = args.images or (24 if dry else 4096)
    batch = 4 if dry else 256
    steps, log_every = (3, 1) if dry else (max(8, images // batch - 1), 3)
    cpus = os.cpu_count() or 1
    started = time.perf_counter()

    shutil.rmtree(work / "runs", ignore_errors=True)  # fresh run folders: a left-over checkpoint would resume
    jpegs = work / "jpegs"
    write_jpegs(jpegs, images, 8 if dry else 128, (96, 72) if dry else (500, 375), min(cpus, 16), args.quality)
    files = list((jpegs / "train").rglob("*.jpg"))[:images]
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1e3
    prepared, manifest = work / "jpegs-288", None
    if "prepared" in variants_asked:
        manifest = prepare(jpegs, prepared, short_side=48 if dry else 288, workers=min(cpus, 16))
    timings = {"jpegs_and_prepare_s": time.perf_counter() - started}
    print(f"{images} JPEGs, {mean_kb:.0f} KB each" + (f"; prepared copy {manifest['bytes'] / images / 1e3:.0f} KB each"
          if manifest else "") + f" ({timings['jpegs_and_prepare_s']:.0f} s)", flush=True)

    device = "cpu" if dry else "cuda"
    step_start = time.perf_counter()
    ref_records = reference(device, models, 2 if dry else batch, dry)
    synthetic = {(r["model"], r["mode"]): r for r in ref_records}
    timings["synthetic_reference_s"] = time.perf_counter() - step_start
    compiled_records = []
    if args.compiled:
        step_start = time.perf_counter()
        compiled_records = reference(device, args.compiled.split(","), 2 if dry else args.compiled_batch, dry, True)
        timings["compiled_s"] = time.perf_counter() - step_start
        print(f"compiled: {len(compiled_records)} records ({timings['compiled_s']:.0f} s)", flush=True)

    variants = [v for v in variants_asked if v != "dali" or dali_available()]
    skipped = [v for v in variants_asked if v not in variants]
    rows, unfinished = [], []
    for variant in variants:
        for model in models:
            for mode in ("baseline", "masksub"):
                label = f"{model} {mode} {variant}"
                if args.deadline_s is not None and time.perf_counter() - started > args.deadline_s:
                    unfinished.append(label)
                    continue
                rows.append(train_row(model, mode, variant, dict(
                    jpegs=jpegs, prepared=prepared, dry=dry, device=device, images=images, batch=batch, steps=steps,
                    log_every=log_every, run_dir=work / "runs" / label.replace(" ", "-")), synthetic))
    timings["total_s"] = time.perf_counter() - started
    result = {"device": _device_name(dry), "cpus": cpus, "images": images, "mean_file_kb": mean_kb,
              "batch_size": batch, "steps": steps, "dry_run": dry, "skipped": skipped, "unfinished": unfinished,
              "rows": rows, "reference": ref_records, "compiled": compiled_records, "timings": timings,
              "prepare": manifest}
    print(table(result))
    print(markdown(result))
    if skipped:
        print(f"skipped (not importable here): {', '.join(skipped)}")
    if unfinished:
        print(f"not started before --deadline-s {args.deadline_s:.0f}: {', '.join(unfinished)}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (Path(args.out) / f"{args.name}.md").write_text(markdown(result) + "\n")


def train_row(model: str, mode: str, variant: str, run: dict, synthetic: dict[tuple[str, str], dict]) -> dict:
    """One preset through `train()` from one input; its img/s against the bench's on the resident batch."""
    dry = run["dry"]
    overrides = [f"experiment={PRESETS[model]}", "data.img_size=224" if not dry else "data.img_size=32",
                 "data.num_classes=100", f"train.batch_size={run['batch']}", f"train.max_steps={run['steps']}",
                 f"train.log_every={run['log_every']}", "train.epochs=100", "train.eval_every=100",
                 "train.progress=false", f"train.device={run['device']}",
                 f"masksub={'mask' if mode == 'masksub' else 'off'}", *VARIANTS[variant]]
    if variant == "resident":
        overrides += ["data=synthetic", f"data.synthetic_train_size={run['images']}",
                      f"data.synthetic_val_size={run['batch']}"]
    else:
        overrides.append(f"data.root={run['prepared'] if variant == 'prepared' else run['jpegs']}")
    if dry:
        overrides += ["model=vit_micro", "data.num_workers=1" if variant != "resident" else "data.num_workers=0"]
    result = bench_train(overrides, run["images"], run["run_dir"], resident=variant == "resident")
    ref = synthetic.get((model, mode), {})
    reference = ref.get("img_per_s")
    flops = ref.get("flops_per_img")
    row = {"model": model, "mode": mode, "variant": variant, "img_per_s": result["img_per_s"],
           "data_wait_frac": result["data_wait_frac"], "cpu_cores_used": result["cpu_cores_used"],
           "synthetic_img_per_s": reference, "vs_synthetic": result["img_per_s"] / reference if reference else None,
           "mfu": ref["mfu"] * result["img_per_s"] / reference if ref.get("mfu") and reference else None,
           "flops_per_img": flops, "results_md_img_per_s": RESULTS_MD.get((model, mode)), "steps": result["steps"],
           "wall_s": result["wall_s"]}
    print(f"{model} {mode} {variant}: {row['img_per_s']:.0f} img/s, wait {row['data_wait_frac']:.2f}, "
          f"{row['cpu_cores_used']:.1f} cores ({row['wall_s']:.0f} s)", flush=True)
    return row


def table(result: dict) -> str:
    lines = [f"{result['device']}, {result['cpus']} CPUs; batch {result['batch_size']}, {result['steps']} steps a run",
             "model    mode      input     img/s  data_wait  CPU cores  synthetic img/s  vs synthetic"]
    for r in result["rows"]:
        ref = f"{r['synthetic_img_per_s']:15.0f}  {r['vs_synthetic']:11.2f}" if r["synthetic_img_per_s"] else ""
        lines.append(f"{r['model']:8} {r['mode']:9} {r['variant']:8} {r['img_per_s']:6.0f} {r['data_wait_frac']:10.2f} "
                     f"{r['cpu_cores_used']:10.1f}  {ref}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """One table: per preset and mode, (a) the bench on a resident batch (with its MFU), then each input through
    train() as img/s, its share of (a), data_wait_frac and CPU cores; the compiled bench rows below."""
    variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    head = ["preset", "MaskSub", "(a) bench img/s", "GFLOP/img", "MFU"] + [f"{v} img/s (of a) · wait · cores"
                                                                          for v in variants]
    lines = [f"{result['device']}, {result['cpus']} CPUs; batch {result['batch_size']}, {result['steps']} steps a "
             f"run; {result['images']} JPEGs of {result['mean_file_kb']:.0f} KB",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["model"], r["mode"], r["variant"]): r for r in result["rows"]}
    for ref in result["reference"]:
        cells = [PRESETS.get(ref["model"], ref["model"]), "on" if ref["mode"] == "masksub" else "off",
                 _rate(ref["img_per_s"]), _gflops(ref.get("flops_per_img")), _pct(ref.get("mfu"))]
        for v in variants:
            r = by.get((ref["model"], ref["mode"], v))
            cells.append("not run" if r is None else
                         f"{_rate(r['img_per_s'])} ({_pct(r['vs_synthetic'], 0)}) · {r['data_wait_frac']:.2f} · "
                         f"{r['cpu_cores_used']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for ref in result["compiled"]:
        cells = [f"{ref['model']} compiled, batch {ref['batch_size']}", "on" if ref["mode"] == "masksub" else "off",
                 _rate(ref["img_per_s"]), _gflops(ref.get("flops_per_img")), _pct(ref.get("mfu"))]
        cells += ["-"] * len(variants)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"  # a dry run's rates are below 1 img/s


def _gflops(x: float | None) -> str:
    return "-" if not x else f"{x / 1e9:.3g}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def _device_name(dry: bool) -> str:
    import torch

    return "CPU (dry run)" if dry else torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
