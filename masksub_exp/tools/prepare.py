"""Write a resized copy of an ImageFolder, so training decodes small files.

    python -m masksub_exp.tools.prepare SRC DST [--short-side 288] [--quality 90] [--workers N]

Every image under SRC (`train/<class>/*`, `val/<class>/*`, any other split folder alike) whose shorter side is
longer than --short-side is resized (aspect kept, PIL's Lanczos filter, from a draft decode at >= 2x the target
when the file is a JPEG) and written as a JPEG of --quality under the same relative path; smaller images are
copied byte for byte (names are kept, so a resized PNG is a JPEG under its old name; PIL and DALI read by
content). `DST/manifest.json` records the parameters, counts, sizes and a hash of the source listing
(relative path, size, mtime). Re-running skips files written after their source last changed (each is
written to a temporary name and renamed, so an interrupted run leaves no half file); a DST prepared with
other parameters is refused.
Train with `data.root=DST`: the recipe is unchanged, the model sees the crops of a smaller image (README,
Performance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(src: Path) -> list[Path]:
    return sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def source_hash(src: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        st = (src / rel).stat()
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def resize_one(src: Path, dst: Path, short_side: int, quality: int) -> tuple[str, int, int]:
    """Write one file; returns (what was done, source bytes, written bytes)."""
    size_in = src.stat().st_size
    if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:  # written after the source last changed
        return "kept", size_in, dst.stat().st_size
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with Image.open(src) as img:
        w, h = img.size
        if min(w, h) <= short_side:
            shutil.copyfile(src, tmp)
            action = "copied"
        else:
            scale = short_side / min(w, h)
            out = (max(1, round(w * scale)), max(1, round(h * scale)))
            if img.format == "JPEG":  # decode at a reduced scale that still has >= 2x the target's pixels per side
                img.draft("RGB", (2 * out[0], 2 * out[1]))
            img.convert("RGB").resize(out, Image.Resampling.LANCZOS).save(tmp, "JPEG", quality=quality)
            action = "resized"
    tmp.replace(dst)
    return action, size_in, dst.stat().st_size


def _job(item: tuple[str, str, int, int]) -> tuple[str, int, int]:
    src, dst, short_side, quality = item
    return resize_one(Path(src), Path(dst), short_side, quality)


def prepare(src: Path, dst: Path, *, short_side: int = 288, quality: int = 90, workers: int = 1) -> dict[str, Any]:
    """Resize SRC into DST (re-runnable) and write DST/manifest.json; returns the manifest."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if short_side < 16 or not 1 <= quality <= 100:
        raise ValueError(f"--short-side {short_side} / --quality {quality}: expected >= 16 / 1-100")
    manifest_path = dst / "manifest.json"
    params = {"short_side": short_side, "quality": quality, "resample": "lanczos"}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if {k: old.get(k) for k in params} != params:
            raise ValueError(f"{dst} was prepared with {({k: old.get(k) for k in params})}, not {params}: "
                             "use another folder, or delete it")
    files = list_images(src)
    if not files:
        raise FileNotFoundError(f"no images under {src}")
    start = time.perf_counter()
    items = [(str(src / rel), str(dst / rel), short_side, quality) for rel in files]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_job, items, chunksize=64))
    else:
        results = [_job(item) for item in items]
    counts: dict[str, dict[str, int]] = {}
    for rel in files:
        split = rel.parts[0] if len(rel.parts) > 1 else "."
        counts.setdefault(split, {"images": 0})["images"] += 1
    manifest = {
        **params,
        "source": str(src.resolve()),
        "source_hash": source_hash(src, files),
        "images": len(files),
        "splits": counts,
        "resized": sum(r[0] == "resized" for r in results),
        "copied": sum(r[0] == "copied" for r in results),
        "kept_from_earlier_run": sum(r[0] == "kept" for r in results),
        "source_bytes": sum(r[1] for r in results),
        "bytes": sum(r[2] for r in results),
        "seconds": round(time.perf_counter() - start, 2),
    }
    tmp = manifest_path.with_name("manifest.json.tmp")
    dst.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(manifest_path)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m masksub_exp.tools.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="an ImageFolder: split folders (train/, val/, ...) of class folders")
    parser.add_argument("dst", type=Path, help="the resized copy (re-running resumes it; train with data.root=DST)")
    parser.add_argument("--short-side", type=int, default=288, help="resize images whose shorter side is longer "
                        "to this many pixels (default 288)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of resized files (default 90)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that resize at once (default: all CPU cores)")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(args.src, args.dst, short_side=args.short_side, quality=args.quality, workers=args.workers)
    except (FileNotFoundError, ValueError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{manifest['images']} images ({manifest['resized']} resized, {manifest['copied']} copied, "
          f"{manifest['kept_from_earlier_run']} already there): {manifest['source_bytes'] / 1e6:.1f} MB -> "
          f"{manifest['bytes'] / 1e6:.1f} MB in {args.dst}")


if __name__ == "__main__":
    main()
