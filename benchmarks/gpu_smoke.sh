#!/usr/bin/env bash
# GPU smoke and timing, for whoever has a CUDA GPU (not measured by the author: the
# development machine has none). Runs every subcommand once with --device cuda (and the
# bf16 --amp path), a timed resnet32 round on fake CIFAR-10, then the benchmarks on cuda.
# Usage: bash benchmarks/gpu_smoke.sh [OUT_DIR]   (about 5-10 minutes on one GPU)
# Writes OUT_DIR/*.json and prints a summary; paste it into BENCHMARKS.md ("GPU").
# DEVICE=cpu ARCH=tiny BENCH=0 checks the script itself on a machine without a GPU.
# On a bare device machine it needs what gpu_check.sh needs (SQLAlchemy's wheel in .whl/,
# see there); its data is the MNIST subset embedded in icl and fake CIFAR-10. It stops
# after HARD seconds (default 540) whatever it is doing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-smoke-out}
mkdir -p "$out"
if [ -z "${_GPU_SMOKE_PASS:-}" ]; then
  rc=0 token=$$-$(date +%s%N)
  _GPU_SMOKE_PASS=$token timeout -k 5 "${HARD:-540}" bash "$0" "$out" || rc=$?
  # what nested process groups kept running, found by the token in its environment
  for p in /proc/[0-9]*; do
    if grep -qzx "_GPU_SMOKE_PASS=$token" "$p/environ" 2>/dev/null; then
      kill "${p#/proc/}" 2>/dev/null || :
    fi
  done
  if ((rc == 124 || rc == 137)); then echo "STOPPED at the hard limit of ${HARD:-540} s (PARTIAL)"; fi
  exit "$rc"
fi
if ! python3 -c "import sqlalchemy" 2>/dev/null; then
  rm -rf /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site "${WHEELS:-.whl}"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! command -v icl >/dev/null; then  # icl from this checkout (a bare GPU image)
  mkdir -p /tmp/icl-bin
  printf '#!/bin/sh\nexec python3 -m icl_cli "$@"\n' > /tmp/icl-bin/icl
  chmod +x /tmp/icl-bin/icl
  export PATH=/tmp/icl-bin:$PATH PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
ws=$(mktemp -d)
trap 'rm -rf "$ws"' EXIT
export ICL_WORKSPACE="$ws" MLFLOW_DISABLE_TELEMETRY=true
device=${DEVICE:-cuda} arch=${ARCH:-mnist-cnn} r32=${R32:-resnet32}
if [ "$device" = cuda ]; then
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
dev=(--device "$device" --no-mlflow)
t() { local name=$1 t0 ms; shift; t0=$(date +%s%N)
      "$@" > "$out/$name.json"
      ms=$((($(date +%s%N) - t0) / 1000000))
      printf '%-28s %4d.%d s\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) | tee -a "$out/times.txt"; }

echo "== every subcommand on cuda (mnist-cnn, embedded MNIST subset)"
t init          icl init -e smoke --arch "$arch" --train-size 1000 --init-epochs 1 --epochs 1 --count 20 --json "${dev[@]}"
t synthesize    icl synthesize -e smoke --round 1 --json "${dev[@]}"
t synthesize-amp icl synthesize -e smoke --round 1 --force --amp --json "${dev[@]}"
t reclassify    icl reclassify -e smoke --round 1 --json "${dev[@]}"
t reclassify-amp icl reclassify -e smoke --round 1 --force --amp --json "${dev[@]}"
t evaluate      icl evaluate -e smoke --round 1 --json "${dev[@]}"
t attack        icl attack -e smoke --round 1 --against smoke --json "${dev[@]}"
t inspect       icl inspect -e smoke --round 1 --json
t run           icl run -e smoke --rounds 2 --json "${dev[@]}"
t ova-init      icl init -e ova --arch "$arch" --mode ova --train-size 1000 --init-epochs 1 --epochs 1 --count 20 --json "${dev[@]}"
t ova-run       icl run -e ova --rounds 1 --json "${dev[@]}"
t status        icl status --json
t verify        icl verify --json
t report        icl report --json

echo "== timed resnet32 round on fake CIFAR-10 (batch 128)"
t r32-init      icl init -e r32 --dataset fake-cifar10 --arch "$r32" --batch-size 128 --init-epochs 1 --epochs 1 --count "${R32_COUNT:-200}" --max-steps 50 --json "${dev[@]}"
t r32-synthesize icl synthesize -e r32 --round 1 --check-every 10 --json "${dev[@]}"
t r32-reclassify icl reclassify -e r32 --round 1 --json "${dev[@]}"
t r32-evaluate  icl evaluate -e r32 --round 1 --json "${dev[@]}"

[ "${BENCH:-1}" = 1 ] || { cat "$out/times.txt"; exit 0; }
echo "== benchmarks on cuda (ratios against bare loops, same process)"
python3 -m benchmarks --device cuda --only hardware,reclassify,synthesis,early-stop,ova --json \
  > "$out/benchmarks-cuda.json"
python3 -m benchmarks --device cuda --only hardware,reclassify,synthesis,early-stop,ova \
  --repeats 3 | tee "$out/benchmarks-cuda.txt"
cat "$out/times.txt"
