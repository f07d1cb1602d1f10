#!/usr/bin/env bash
# The GPU matrix of docs/results.md, end to end in one call of at most ~9 minutes on a lent GPU machine
# (torch preinstalled, nothing fetched): every image sweep of `python -m masksub_exp.results` at the GPU
# budget below, many runs at once on the one GPU (CUDA MPS when the machine allows it), then the raw
# per-run files packed into $OUT/gpu_runs.tgz for docs/results_gpu/ (committed; the page's GPU part).
#
# The budget is fixed here, before any run: 3 seeds, the full 60,000 training images, 20 epochs for the
# Fashion-MNIST models (ViT 16 tokens, ViT 49 tokens depth 12, Swin, ResNet; ratio curve; variants), the
# little-data ViT 40 epochs on 3,000 images. MiniLM is not run here (its 83 MB model package cannot travel).
# Runs go main-comparison-first; none starts after the deadline and the ones still going are stopped and
# listed on the page as unfinished.
#
#   OUT=/tmp/o benchmarks/gpu_results.sh              # on the GPU machine
#   benchmarks/gpu_results.sh --dry-run               # here, on the CPU: the same path at a tiny budget
# Environment: CARRY (default .gpu_carry: whl/ wheels for hydra-core, omegaconf, antlr4, submitit,
# hydra-submitit-launcher, timm; fmnist/ the four idx.gz files), PY (python), TOTAL_S (default 560),
# PARALLEL (default 16), LOADER_S (seconds for benchmarks/gpu_loader.sh first; 0 skips it; default 150),
# LOADER_ARGS (extra arguments for it), ONLY (sweep keys, for a quicker dry run).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-results-out}; mkdir -p "$OUT"
CARRY=${CARRY:-.gpu_carry} PY=${PY:-python3} TOTAL_S=${TOTAL_S:-560} PARALLEL=${PARALLEL:-16}
LOADER_S=${LOADER_S:-150}
DRY=0; [[ ${1:-} == --dry-run ]] && DRY=1
START=$SECONDS
# never deleted: a run stopped at the deadline keeps its checkpoint there and the same call resumes it
WORK=${WORK:-/tmp/gpu-results-work}; mkdir -p "$WORK"

if ! $PY -c "import hydra, submitit, omegaconf" 2>/dev/null; then
  [[ -d $CARRY/whl ]] || { echo "hydra/submitit missing and no $CARRY/whl to install them from"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/launchers" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
FMNIST=/usr/share/datasets/fashion-mnist
if [[ ! -f $FMNIST/train-images-idx3-ubyte.gz ]]; then
  mkdir -p "$FMNIST" && cp "$CARRY"/fmnist/*.gz "$FMNIST"/ || { echo "no Fashion-MNIST at $FMNIST or $CARRY/fmnist"; exit 2; }
fi

MPS=off
if ((DRY == 0)); then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # MPS lets the runs' small kernels share the GPU at once instead of taking turns
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
    if timeout 60 $PY -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then MPS=on
    else echo quit | nvidia-cuda-mps-control; echo "MPS started but CUDA failed under it: running without"; fi
  fi
  echo "MPS: $MPS"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$WORK/gpu_util.csv" &
  SMI=$!
fi

if ((LOADER_S > 0)) && [[ -f benchmarks/gpu_loader.sh ]]; then  # issue 16's loader numbers, first and capped
  read -r -a loader_args <<< "${LOADER_ARGS:-}"; ((DRY)) && loader_args+=(--dry-run)
  OUT=$WORK/loader timeout "$LOADER_S" bash benchmarks/gpu_loader.sh "${loader_args[@]}" > "$WORK/loader.log" 2>&1
  echo "loader benchmark: exit $? ($((SECONDS - START)) s)"; tail -n 25 "$WORK/loader.log"
  cp "$WORK"/loader/gpu_loader.json "$WORK"/loader/gpu_loader.txt "$OUT"/ 2>/dev/null
fi

if ((DRY)); then
  budget=(--device cpu --parallel 2 --seeds 1 --epochs 1 --train-limit 512 --small-epochs 1 --small-train-limit 256
          --max-steps 2)
else
  budget=(--device cuda --parallel "$PARALLEL" --seeds 3 --epochs 20 --train-limit 0 --small-epochs 40
          --small-train-limit 3000)
fi
left=$((TOTAL_S - (SECONDS - START) - 70))  # what the matrix may use: 60 s of stopping grace, 10 s to pack
deadline=$(awk "BEGIN {print ($left > 30 ? $left : 30) / 60}")
echo "matrix: deadline ${deadline} min"
# data.batch_augment: the per-sample transform fed only ~2,500 img/s a process (86 % data wait on the first try)
if [[ -n ${PLAN:-} ]]; then  # a pre-registered set (docs/plans/gpu_*.yaml): its budget and deadline come from the plan
  $PY -m masksub_exp.results --plan "$PLAN" --runs "$WORK/runs" --record "$WORK/record" --out "$WORK/page" \
    --gpu-runs "$WORK/none" > "$WORK/matrix.log" 2>&1
else
  $PY -m masksub_exp.results --launcher local --threads 1 "${budget[@]}" --deadline-min "$deadline" \
    --extra "data.batch_augment=true" \
    --only "${ONLY:-fmnist_vit,fmnist_vit_tokens,fmnist_swin,fmnist_resnet,vit_ratio,vit_variants,vit_small_data}" \
    --runs "$WORK/runs" --out "$WORK/page" --gpu-runs "$WORK/none" > "$WORK/matrix.log" 2>&1
fi
echo "matrix: exit $? ($((SECONDS - START)) s)"; grep -c ": done" "$WORK/matrix.log"; tail -n 5 "$WORK/matrix.log"
cp "$WORK/matrix.log" "$OUT/"

[[ -n ${SMI:-} ]] && kill "$SMI" 2>/dev/null
((DRY == 0)) && [[ $MPS == on ]] && echo quit | nvidia-cuda-mps-control
root=$(ls -d "$WORK"/runs/*/ | head -n 1)
[[ -n ${PLAN:-} ]] && root=$(ls -d "$WORK"/record/*/ | head -n 1)  # a plan's record: stamped runs, no checkpoints
$PY - "$root" "$WORK/gpu_util.csv" "$MPS" <<'EOF'
import json, os, sys, subprocess
from pathlib import Path
import torch
root, util, mps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rec = json.loads((root / "budget.json").read_text())
name = "CPU (dry run)"
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
busy = [float(line.split(",")[0]) for line in util.read_text().splitlines() if line.strip()] if util.exists() else []
rec["machine"] = (f"{name}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                  f"MPS {mps}" + (f", GPU busy {sum(busy) / len(busy):.0f} % of the samples" if busy else ""))
(root / "budget.json").write_text(json.dumps(rec, indent=1))
print(rec["machine"])
EOF
cp "$WORK"/*.log "$WORK"/gpu_util.csv "$root" 2>/dev/null; cp -r "$WORK/loader" "$root/loader" 2>/dev/null
tar czf "$OUT/gpu_runs.tgz" -C "$root" --exclude=checkpoints --exclude='*.pt' --exclude='.hydra' .
ls -la "$OUT"; echo "total $((SECONDS - START)) s"
