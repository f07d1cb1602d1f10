#!/usr/bin/env bash
# GPU checks and benchmarks in one go, for a lent GPU machine with torch preinstalled.
# Pure-Python deps the image lacks (hydra, omegaconf, antlr4, our timm pin) travel in .devsite/.
# Usage: benchmarks/gpu_check.sh [smoke] [eager] [compiled] [blocks]   (default: all); logs in ${OUT}.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.devsite:$PWD" PYTHONUNBUFFERED=1
sections=${*:-smoke eager compiled blocks}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
  date -u
} 2>&1 | tee "$OUT/env.txt"

table() {  # JSON records -> the benchmark's table
  python3 -c "import json,sys; from masksub_exp.bench.step import Record, format_table; \
print(format_table([Record(**r) for r in json.load(open(sys.argv[1]))]))" "$1" | tee "${1%.json}.txt"
}
bench() {  # name timeout args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m masksub_exp.bench --device cuda --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "== $name ($*)"; table "$OUT/$name.json"; tail -n 3 "$OUT/$name.err"
}

for section in $sections; do
  case $section in
    smoke)  # correctness on the GPU: short MaskSub runs in bf16 and in fp16 (GradScaler)
      for prec in bf16 fp16; do
        timeout 120 python3 -m masksub_exp.train experiment=smoke train.device=cuda train.precision=$prec \
          train.progress=false hydra.run.dir=/tmp/smoke-$prec > /dev/null 2>&1
        python3 -c "import json; d=json.load(open('/tmp/smoke-$prec/summary.json')); print('$prec', d['step'], d['top1'])"
      done 2>&1 | tee "$OUT/smoke.txt" ;;
    eager) bench eager 240 ;;
    compiled) bench compiled 240 --compile --models vit_b16,vit_s16 ;;
    blocks) bench blocks 150 --compile --compile-mode blocks --models vit_b16 ;;
  esac
done
