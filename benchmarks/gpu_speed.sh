#!/usr/bin/env bash
# Issue 21's GPU measurement in one call of at most ~9 minutes on one H200 (16 CPU cores), one table:
# for deit3/vit_s_400ep, deit3/vit_b_400ep, swin/t and rsb/resnet50, baseline and MaskSub, train.precision=auto
# (bf16): (a) `masksub_exp.bench` on a resident synthetic batch, with MFU; then the preset through train() with
# (b) one batch resident on the device, (d) data.backend=dali at 4 CPU threads, (c) the PIL loader at 4 and at 14
# workers, from 5,120 ImageNet-like JPEGs (500x375, ~115 KB, quality 95) written on the machine; each row with
# data_wait_frac and the CPU cores it used; plus ViT-B/16 compiled (baseline with MFU, MaskSub) at batch 128.
# Runs go in that order and none starts after TOTAL_S - 40 s: the ones left are listed as not run.
#
#   benchmarks/dali_parts.sh install && OUT=/tmp/out benchmarks/gpu_speed.sh    # there (after the transfers)
#   benchmarks/gpu_speed.sh --dry-run                                            # here: the same path on the CPU
# Environment: OUT (gpu_speed.json, gpu_speed.md, gpu_speed.txt, env.txt), SITE (/tmp/site: dali_parts.sh's
# install; its env.sh is sourced when present), PYTHON (python3), TOTAL_S (540; dry run 7200), MODELS, VARIANTS, COMPILED
# (narrower runs; COMPILED= skips the compiled rows), COMPILED_BATCH (128), IMAGES (5120; dry run 16).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=(); [[ ${1:-} == --dry-run ]] && DRY=(--dry-run)
SITE=${SITE:-/tmp/site}
# shellcheck disable=SC1091
[[ -f $SITE/env.sh ]] && source "$SITE/env.sh"  # DALI, hydra, omegaconf, submitit, timm (dali_parts.sh install)
export PYTHONPATH="$PWD:$PWD/launchers${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-$([[ ${#DRY[@]} -gt 0 ]] && echo 7200 || echo 540)}  # the dry run's budget: a slow shared CPU
OUT=${OUT:-/tmp/gpu-speed-out}
mkdir -p "$OUT"
IMAGES=${IMAGES:-$([[ ${#DRY[@]} -gt 0 ]] && echo 16 || echo 5120)}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  echo "$(getconf _NPROCESSORS_ONLN) CPUs; $(date -u)"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
  "$PY" -c "import nvidia.dali as d; print('DALI', d.__version__)" 2>/dev/null || echo "DALI not importable"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout $((TOTAL_S + 20)) "$PY" benchmarks/gpu_loader.py "${DRY[@]}" --out "$OUT" --name gpu_speed \
  --work /tmp/masksub-gpu-speed --images "$IMAGES" --quality 95 \
  --models "${MODELS:-vit_s16,vit_b16,swin_t,resnet50}" --variants "${VARIANTS:-resident,dali,pil4,pil14}" \
  --compiled "${COMPILED-vit_b16}" --compiled-batch "${COMPILED_BATCH:-128}" --deadline-s $((TOTAL_S - 40)) \
  2> "$OUT/gpu_speed.err" | tee "$OUT/gpu_speed.txt"
