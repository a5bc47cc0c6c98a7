#!/usr/bin/env bash
# One time-boxed pass on a CUDA machine, for a session lent a GPU for minutes (BUDGET
# seconds in all, default 520):
#   - Table 1 (softmax, full MNIST) at the paper's settings (recipes/lib.sh, SCALE=paper):
#     SEEDS seeds at once, each method in its own process, all on the one GPU, stopped by
#     Ctrl-C at the deadline (the rounds they finished are kept; rerun to go on);
#   - beside it: pytest -m gpu, every subcommand on cuda (gpu_smoke.sh with BENCH=0), and
#     the benchmarks' icl-versus-bare-PyTorch ratios on cuda;
#   - at the deadline: the table at the last round all methods of a seed reached, FGSM
#     two-way between each seed's baseline and ICL, and a grid of ICL's pseudo-negatives.
# Usage: MNIST_DIR=path/to/mnist bash benchmarks/gpu_check.sh OUT_DIR
# Writes OUT_DIR/log.txt, report-s<seed>.json, catalog-s<seed>.db (step timings: table
# steps, column seconds), bench.json and grid.png.
# DEVICE=cpu SMOKE=1 BUDGET=200 ARCH=tiny R32=resnet8 R32_COUNT=5 checks the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
t0=$(date +%s)
BUDGET=${BUDGET:-520}
export DEADLINE=$((t0 + BUDGET - ${TAIL:-80}))
export DEVICE=${DEVICE:-cuda} NO_MLFLOW=1 LANES=3 LANE_THREADS=${LANE_THREADS:-2}
export THREADS=${THREADS:-2} SCALE=${SCALE:-paper} MNIST_DIR=${MNIST_DIR:?set MNIST_DIR}
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-0 1}
ws=${WS:-/tmp/gpu-table1}
say() { echo "[$(($(date +%s) - t0)) s] $*"; }
# within CAP CMD...: CMD with a limit of CAP seconds or what is left before the deadline.
within() {
  local cap=$1 left=$((DEADLINE - $(date +%s))); shift
  if ((left < 10)); then say "skipped at the deadline: $*"; return 0; fi
  timeout $((left < cap ? left : cap)) "$@"
}

# On a bare GPU image: icl from this checkout, not installed (it needs only SQLAlchemy
# beyond what such images hold; MLflow is off here).
if ! command -v icl >/dev/null; then
  mkdir -p /tmp/icl-bin
  printf '#!/bin/sh\nexec python3 -m icl_cli "$@"\n' > /tmp/icl-bin/icl
  chmod +x /tmp/icl-bin/icl
  command -v python >/dev/null || ln -sf "$(command -v python3)" /tmp/icl-bin/python
  export PATH=/tmp/icl-bin:$PATH PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

say "Table 1 ($SCALE): seeds $SEEDS in the background, deadline in $((DEADLINE - t0)) s"
rm -rf "$ws" && mkdir -p "$ws"
pids=()
for seed in $SEEDS; do
  WS=$ws/s$seed SEEDS=$seed MODES=softmax bash recipes/table1_mnist.sh > "$ws/s$seed.out" 2>&1 &
  pids+=($!)
done

say "pytest -m gpu"
within 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/cli/test_cli_gpu.py 2>&1 | tail -n 15
say "every subcommand (gpu_smoke.sh)"
BENCH=0 within 150 bash benchmarks/gpu_smoke.sh /tmp/gpu-smoke 2>&1 | tail -n 25
say "benchmarks on $DEVICE (quick)"
within 120 python3 -m benchmarks --quick --device "$DEVICE" --only reclassify,synthesis \
  --json > "$out/bench.json" 2>/tmp/bench.err || tail -n 5 /tmp/bench.err
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv

say "waiting for Table 1"
for p in "${pids[@]}"; do wait "$p"; done
for seed in $SEEDS; do
  say "seed $seed:"; cat "$ws/s$seed.out"; tail -n 4 "$ws"/s$seed/*.log
done

# FGSM between each seed's baseline and ICL, at the rounds chosen on validation among the
# rounds both reached.
rounds() {
  python3 - "$1" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("summarize", "recipes/summarize.py")
s = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s)
rows = {r["method"]: r for r in s.common(s.load([sys.argv[1]]))}
if {"icl", "baseline"} <= rows.keys():
    print(rows["icl"]["best_val_round"], rows["baseline"]["best_val_round"], rows["icl"]["rounds"])
EOF
}
reports=()
for seed in $SEEDS; do  # the recipe makes no report when a method failed: make it here
  icl report --workspace "$ws/s$seed" --json --no-plot > "$out/report-s$seed.json" &&
    reports+=("$out/report-s$seed.json")
done
pids=()
for seed in $SEEDS; do
  read -r a b last < <(rounds "$out/report-s$seed.json") || continue
  say "FGSM seed $seed: icl round $a vs baseline round $b"
  icl attack --workspace "$ws/s$seed" --device "$DEVICE" --no-mlflow -e "softmax-s$seed-icl" \
    --round "$a" --against "softmax-s$seed-baseline:$b" --eps 0.125 --json \
    > "$ws/s$seed/attack.json" &
  pids+=($!)
  if [ "$seed" = "${SEEDS%% *}" ] && [ "$last" -gt 0 ]; then
    grid=$(icl inspect --workspace "$ws/s$seed" -e "softmax-s$seed-icl" --round "$last" --json |
      python3 -c "import json, sys; print(json.load(sys.stdin)['grid'])") && cp "$grid" "$out/grid.png"
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
for seed in $SEEDS; do
  [ -s "$ws/s$seed/attack.json" ] && python3 recipes/attack_table.py < "$ws/s$seed/attack.json"
  # again, now with the FGSM records; and the catalog for the step timings
  icl report --workspace "$ws/s$seed" --json --no-plot > "$out/report-s$seed.json"
  python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
    "$ws/s$seed/.icl/catalog.db" "$out/catalog-s$seed.db"
done
say "Table 1 at the last round every method of a seed reached"
python3 recipes/summarize.py "${reports[@]}" --paper table1 --rounds common --per-seed --by-round
say "done"
