#!/usr/bin/env bash
# Training img/s from JPEG files on one GPU (ViT-S/16, ViT-B/16; baseline, MaskSub; bf16) with today's loader,
# the CPU savings (JPEG draft, a prepared 288 px copy) and DALI when it is importable; the same models on a
# resident synthetic batch as the reference. Installs nothing. Pure-Python deps the GPU image lacks (hydra-core,
# omegaconf, antlr4, submitit) are expected in .devsite/ as for gpu_check.sh. ~4 minutes on a 16-core H200 box.
# Usage: benchmarks/gpu_loader.sh [--dry-run] [--images N] [--models vit_s16,vit_b16] [--variants full,draft,prepared,dali]
# Writes $OUT/gpu_loader.json (and gpu_loader.txt) when OUT is set; JPEGs and run folders go to /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/.devsite:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true; nproc; } > "$OUT/env.txt"
  "$PY" benchmarks/gpu_loader.py --out "$OUT" "$@" 2>"$OUT/gpu_loader.err" | tee "$OUT/gpu_loader.txt"
else
  "$PY" benchmarks/gpu_loader.py "$@"
fi
