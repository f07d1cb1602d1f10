#!/usr/bin/env bash
# DALI (and the pure-Python packages the GPU image lacks) to a GPU machine that takes at most 64 MiB a transfer:
# here the wheels are downloaded and split into parts packed into numbered transfer folders; there the parts are
# checked, joined, checked again as whole wheels, and installed into a --target folder. benchmarks/RESULTS.md
# ("Bringing DALI to the GPU machine") says how the consecutive transfers carry the folders.
#
#   benchmarks/dali_parts.sh prepare   # here (PyPI): download for $PYVER, then pack
#   benchmarks/dali_parts.sh pack      # here, offline: split the downloaded wheels, write the manifests
#   benchmarks/dali_parts.sh plan      # here: the transfer folders, their sizes, and the command each call runs
#   benchmarks/dali_parts.sh check     # there: which parts have arrived in $PARTS, which are missing
#   benchmarks/dali_parts.sh install   # there: verify, join, verify, pip install --no-index --no-deps --target $SITE
#
# Environment: PYVER (3.12: the GPU image's Python; 3.11 for the dry run here), DIR (.dali_parts, ignored by git),
# PART_SIZE (split -b size, 50m), CALL_KIB (at most this many KiB per transfer folder, 57344 = 56 MiB: the working
# tree also travels in each 64 MiB transfer), PARTS (/tmp/parts), SITE (/tmp/site), PY (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
DIR=${DIR:-.dali_parts}
PART_SIZE=${PART_SIZE:-50m}
CALL_KIB=${CALL_KIB:-57344}
PARTS=${PARTS:-/tmp/parts}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
HERE="$DIR/py$PYVER"

# DALI needs nvidia-nvimgcodec-cu13[all]: nvjpeg (13.0, the CUDA 13.0 runtime of the GPU image's torch 2.11.0+cu130:
# the GPU JPEG decoder), nvjpeg2k and nvtiff (~7 MB together; without them every import prints load errors)
DALI=(nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16
      nvidia-nvjpeg==13.0.4.44 nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82)
# DALI's requirements that the GPU image lacks (it has numpy, packaging, six, pyyaml, typing-extensions, wheel)
DALI_DEPS=(astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0)
# this project's requirements that the GPU image lacks (pyproject.toml pins); antlr4 4.9.3 exists only as an sdist
PROJECT=(hydra-core==1.3.8 omegaconf==2.3.0 submitit==1.5.4 hydra-submitit-launcher==1.2.0 timm==1.0.31)
SDIST=(antlr4-python3-runtime==4.9.3)

die() { echo "dali_parts.sh: $*" >&2; exit 2; }

download() {
  mkdir -p "$HERE/wheels"
  local plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do plat+=(--platform "$p"); done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${plat[@]}" -d "$HERE/wheels" "${DALI[@]}" "${DALI_DEPS[@]}" "${PROJECT[@]}"
  "$PY" -m pip wheel -q --no-deps -w "$HERE/wheels" "${SDIST[@]}"  # pure Python: one wheel serves every version
}

pack() {
  [[ -d $HERE/wheels ]] && compgen -G "$HERE/wheels/*.whl" >/dev/null || die "no wheels in $HERE/wheels: run prepare"
  local split_dir="$HERE/split" send="$HERE/send"
  rm -rf "$split_dir" "$send"
  mkdir -p "$split_dir" "$send"
  local limit=$((CALL_KIB * 1024)) whole
  (cd "$HERE/wheels" && sha256sum -- *.whl) > "$send/wholes.sha256"
  for whole in "$HERE"/wheels/*.whl; do
    if (($(stat -c %s "$whole") > limit)); then
      split -b "$PART_SIZE" -- "$whole" "$split_dir/$(basename "$whole").part-"
    else
      cp -- "$whole" "$split_dir/"
    fi
  done
  (cd "$split_dir" && sha256sum -- *) > "$send/parts.sha256"
  # first-fit decreasing into transfer folders of at most CALL_KIB; call 1 also takes the manifests
  "$PY" - "$split_dir" "$send" "$limit" <<'EOF'
import os, shutil, sys
src, send, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(os.listdir(src), key=lambda f: -os.path.getsize(os.path.join(src, f)))
manifests = sum(os.path.getsize(os.path.join(send, m)) for m in ("wholes.sha256", "parts.sha256"))
calls: list[list[str]] = []
room: list[int] = []
for f in files:
    size = os.path.getsize(os.path.join(src, f))
    if size > limit:
        sys.exit(f"dali_parts.sh: {f} is {size} bytes, over CALL_KIB; lower PART_SIZE")
    k = next((i for i, r in enumerate(room) if r >= size), None)
    if k is None:  # a new transfer; the first one also carries the manifests
        room.append(limit - (manifests if not calls else 0))
        calls.append([])
        k = len(calls) - 1
    calls[k].append(f)
    room[k] -= size
with open(os.path.join(send, "calls.txt"), "w") as out:
    for i, names in enumerate(calls, 1):
        os.makedirs(os.path.join(send, str(i)))
        for f in names:
            shutil.move(os.path.join(src, f), os.path.join(send, str(i), f))
            out.write(f"{i} {f}\n")
for m in ("wholes.sha256", "parts.sha256", "calls.txt"):
    shutil.copy(os.path.join(send, m), os.path.join(send, "1", m))
EOF
  rmdir "$split_dir"
  plan
}

plan() {
  local send="$HERE/send" n
  [[ -f $send/calls.txt ]] || die "no $send/calls.txt: run pack"
  n=$(find "$send" -mindepth 1 -maxdepth 1 -type d | wc -l)
  echo "$(wc -l < "$send/wholes.sha256") wheels for Python $PYVER in $n transfers (folders $send/1..$n):"
  for i in $(seq 1 "$n"); do
    echo "  $i: $(du -sm "$send/$i" | cut -f1) MiB, $(ls "$send/$i" | grep -vc -e '\.sha256$' -e '^calls.txt$') files"
  done
  local tree
  tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
  echo "the working tree travels with each transfer: $((tree / 1048576)) MiB now (each transfer: tree + folder <= 64 MiB)"
  echo "each call (one machine, back to back):  carry=[\"$send/<i>\"]"
  echo "  command: mkdir -p $PARTS && cp $send/<i>/* $PARTS/ && (benchmarks/dali_parts.sh check || true)"
  echo "the last call: ... && benchmarks/dali_parts.sh install && TOTAL_S=480 benchmarks/gpu_speed.sh (benchmarks/RESULTS.md)"
}

check() {
  [[ -f $PARTS/calls.txt ]] || { echo "no $PARTS/calls.txt: transfer 1 has not arrived (a fresh machine?)"; return 1; }
  local missing
  missing=$(while read -r call f; do [[ -f $PARTS/$f ]] || echo "$call"; done < "$PARTS/calls.txt" | sort -un | tr '\n' ' ')
  if [[ -n $missing ]]; then
    echo "parts missing from $PARTS: transfers ${missing% }"
    return 1
  fi
  echo "all $(wc -l < "$PARTS/calls.txt") files of $(sort -u -k1,1 "$PARTS/calls.txt" | wc -l) transfers are in $PARTS"
}

install() {
  check || die "not every part is in $PARTS; the missing transfers' folders must be carried and copied there first"
  (cd "$PARTS" && sha256sum --quiet -c parts.sha256) || die "a part's sha256 differs from parts.sha256 (see above)"
  local joined="$PARTS/whole" name
  rm -rf "$joined"
  mkdir -p "$joined"
  while read -r _ name; do
    if [[ -f $PARTS/$name ]]; then
      ln -f "$PARTS/$name" "$joined/$name" 2>/dev/null || cp "$PARTS/$name" "$joined/$name"
    else
      cat "$PARTS/$name".part-* > "$joined/$name"  # split's suffixes (aa, ab, ...) sort in order
    fi
  done < "$PARTS/wholes.sha256"
  (cd "$joined" && sha256sum --quiet -c ../wholes.sha256) || die "a joined wheel's sha256 differs from wholes.sha256"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$joined"/*.whl
  rm -rf "$joined"
  # nvimgcodec finds nvjpeg through the library path; the line to source before running
  local libs=""
  if [[ -d $SITE/nvidia ]]; then
    libs=$(find "$SITE/nvidia" -maxdepth 3 -type d \( -name lib -o -name lib64 \) | sort | tr '\n' ':')
  fi
  printf 'export PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}\nexport LD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:-}\n' \
    "$SITE" "$libs" > "$SITE/env.sh"
  echo "installed into $SITE; before running: source $SITE/env.sh"
  if [[ -d $SITE/nvidia/dali ]]; then  # the DALI set: it imports from there, with what the GPU script needs
    # shellcheck disable=SC1091
    source "$SITE/env.sh"
    "$PY" -c "import nvidia.dali as d, hydra, omegaconf, submitit, timm; assert d.__file__.startswith('$SITE'), \
d.__file__; print('DALI', d.__version__, 'from', d.__file__, '; timm', timm.__version__)"
  fi
}

case ${1:-} in
  prepare) download; pack ;;
  pack) pack ;;
  plan) plan ;;
  check) check ;;
  install) install ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
