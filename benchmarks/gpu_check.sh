#!/usr/bin/env bash
# One time-boxed pass on a CUDA machine, for a session lent a GPU for minutes. The whole
# script ends by BUDGET seconds (default 510) plus ~10 s of reports, so it fits one device
# call of 540 s:
#   - Table 1 (softmax, full MNIST) at the paper's settings (recipes/lib.sh, SCALE=paper):
#     SEEDS seeds at once (default "0 1 2"), each method in its own process (LANES=3): 9
#     `icl run` on the one GPU, stopped by Ctrl-C at BUDGET - TAIL s (default 420; the
#     rounds they finished are kept; rerun to go on);
#   - beside it: pytest -m gpu; with EXTRAS=1 (the default) also every subcommand on cuda
#     (gpu_smoke.sh with BENCH=0) and the benchmarks' icl-versus-bare-PyTorch ratios;
#   - in the last TAIL s (default 90), for every seed at once: its report, FGSM two-way
#     between its baseline and ICL, ICL's pseudo-negative grid; a seed that failed (a run
#     that diverged, no round in common) is reported and skipped, the others go on;
#   - at the end: the table at the last round all methods of a seed reached (summarize.py
#     --rounds common), and per seed the ICL run's largest gradient norm over its rounds and
#     whether a round diverged (from the report's per-round diagnostics and the run's log).
# Usage: MNIST_DIR=path/to/mnist bash benchmarks/gpu_check.sh OUT_DIR
# Writes at most 5 files to OUT_DIR (the device tool returns at most 8, each < 16 MiB):
#   log.txt          everything printed;
#   report.json      `icl report --json` of every seed's workspace, one list (names are
#                    softmax-s<seed>-<method>, unique): summarize.py OUT_DIR/report.json;
#   catalogs.tar.gz  catalog-s<seed>.db per seed (step timings: benchmarks.step_times);
#   bench.json       the benchmarks (EXTRAS=1 only);
#   grid.png         ICL's pseudo-negatives of the first seed that has an ICL round.
# Timing on the H200 (RESULTS.md, "Table 1"): with 6 runs sharing the GPU an ICL round took
# ~27 s (reclassify 21 s + synthesize 5.5 s), a baseline round ~18 s; C_0 took ~25 s. A GPU
# time-sliced between processes serves 9 at ~1.5x the time per round: ICL ~40 s, ICL-noise
# ~31 s, baseline ~26 s. C_0 ends by ~50 s, so ~370 s of lanes give ICL ~9 rounds, baseline
# ~14. The tail: the stop ~10 s (at worst 60 s, the recipe's timeout -k), reports ~5 s,
# 3 FGSM at once ~30-40 s (one alone took 30 s), reports again ~5 s: ~60 s of the 90.
# Threads: LANE_THREADS=1 (default). A run's work is on the GPU (an epoch's batch indices
# go over in one copy), so torch's CPU threads add little to it; 9 runs x 2 threads (18)
# plus the side jobs would oversubscribe the 16 cores and slow the one thread per process
# that launches the CUDA kernels, small and many for this net at batch 64. The three
# C_0 (icl init) run before the lanes, beside only the side jobs: THREADS=2 each.
# Check the script itself on a CPU (under 7 min on 2 busy cores; the CPU's FGSM needs the
# longer TAIL):
#   DEVICE=cpu SMOKE=1 BUDGET=400 TAIL=160 ARCH=tiny R32=resnet8 R32_COUNT=5 THREADS=1 \
#     MNIST_DIR=... WS=/tmp/gpucheck-ws bash benchmarks/gpu_check.sh /tmp/gpucheck-out
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
t0=$(date +%s)
BUDGET=${BUDGET:-510}
END=$((t0 + BUDGET))
export DEADLINE=$((END - ${TAIL:-90}))
export DEVICE=${DEVICE:-cuda} NO_MLFLOW=1 LANES=3 LANE_THREADS=${LANE_THREADS:-1}
export THREADS=${THREADS:-2} SCALE=${SCALE:-paper} MNIST_DIR=${MNIST_DIR:?set MNIST_DIR}
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-0 1 2}
ws=${WS:-/tmp/gpu-table1}
say() { echo "[$(($(date +%s) - t0)) s] $*"; }
# within CAP CMD...: CMD with a limit of CAP seconds or what is left before the deadline.
within() {
  local cap=$1 left=$((DEADLINE - $(date +%s))); shift
  if ((left < 10)); then say "skipped at the deadline: $*" >&2; return 0; fi
  timeout $((left < cap ? left : cap)) "$@"
}
# before_end RESERVE CMD...: CMD, stopped RESERVE seconds before the end of the budget.
before_end() {
  local left=$((END - $1 - $(date +%s))); shift
  if ((left < 10)); then say "skipped at the end of the budget: $*" >&2; return 1; fi
  local rc=0
  timeout -k 5 "$left" "$@" || rc=$?
  ((rc == 124 || rc == 137)) && say "stopped at the end of the budget: $*" >&2
  return $rc
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

say "Table 1 ($SCALE): seeds $SEEDS in the background, deadline in $((DEADLINE - t0)) s," \
  "end of the budget in $BUDGET s"
rm -rf "$ws" && mkdir -p "$ws"
pids=()
for seed in $SEEDS; do
  WS=$ws/s$seed SEEDS=$seed MODES=softmax bash recipes/table1_mnist.sh > "$ws/s$seed.out" 2>&1 &
  pids+=($!)
done

say "pytest -m gpu"
within 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/cli/test_cli_gpu.py 2>&1 | tail -n 15
if [ "${EXTRAS:-1}" = 1 ]; then
  say "every subcommand (gpu_smoke.sh)"
  BENCH=0 within 150 bash benchmarks/gpu_smoke.sh /tmp/gpu-smoke 2>&1 | tail -n 25
  say "benchmarks on $DEVICE (quick)"
  within 120 python3 -m benchmarks --quick --device "$DEVICE" --only reclassify,synthesis \
    --json > "$out/bench.json" 2>/tmp/bench.err || tail -n 5 /tmp/bench.err
  [ -s "$out/bench.json" ] || rm -f "$out/bench.json"
fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv

say "waiting for Table 1"
for p in "${pids[@]}"; do wait "$p" || say "a Table 1 recipe exited with $? (see below)"; done
for seed in $SEEDS; do
  say "seed $seed:"; cat "$ws/s$seed.out"; tail -n 4 "$ws"/s$seed/*.log
done

# rounds REPORT: ICL's and the baseline's rounds chosen on validation among the rounds
# all of the seed's methods reached, and that last common round.
rounds() {
  python3 - "$1" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("summarize", "recipes/summarize.py")
s = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s)
rows = {r["method"]: r for r in s.common(s.load([sys.argv[1]]))}
if {"icl", "baseline"} <= rows.keys() and None not in (
        rows["icl"]["best_val_round"], rows["baseline"]["best_val_round"]):
    print(rows["icl"]["best_val_round"], rows["baseline"]["best_val_round"], rows["icl"]["rounds"])
EOF
}
# tail_seed SEED: the seed's report (the recipe makes none when a method failed), FGSM
# between its baseline and ICL, ICL's grid, the report again with the FGSM records, and a
# copy of its catalog. Each seed's tail runs on its own: one that fails stops no other.
tail_seed() {
  local seed=$1 w=$ws/s$seed a b last grid
  icl report --workspace "$w" --json --no-plot > "$w/report.json" ||
    { say "seed $seed: no report"; rm -f "$w/report.json"; return 1; }
  if read -r a b last < <(rounds "$w/report.json"); then
    say "FGSM seed $seed: icl round $a vs baseline round $b (last common round $last)"
    before_end 20 icl attack --workspace "$w" --device "$DEVICE" --no-mlflow \
      -e "softmax-s$seed-icl" --round "$a" --against "softmax-s$seed-baseline:$b" \
      --eps 0.125 --json > "$w/attack.json" &
    if [ "$last" -gt 0 ]; then
      grid=$(before_end 20 icl inspect --workspace "$w" -e "softmax-s$seed-icl" --round "$last" \
        --json | python3 -c "import json, sys; print(json.load(sys.stdin)['grid'])" 2>/dev/null) &&
        cp "$grid" "$w/grid.png"
    fi
    wait
    if [ -s "$w/attack.json" ] && python3 recipes/attack_table.py < "$w/attack.json"; then
      icl report --workspace "$w" --json --no-plot > "$w/report.json.new" &&
        mv "$w/report.json.new" "$w/report.json"
    else
      say "seed $seed: no FGSM record"
    fi
  else
    say "seed $seed: baseline and ICL share no evaluated round: no FGSM"
  fi
  mkdir -p "$ws/catalogs"
  python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
    "$w/.icl/catalog.db" "$ws/catalogs/catalog-s$seed.db"
}
pids=()
for seed in $SEEDS; do
  tail_seed "$seed" > "$ws/s$seed.tail" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for seed in $SEEDS; do cat "$ws/s$seed.tail"; done
for seed in $SEEDS; do
  [ -s "$ws/s$seed/grid.png" ] && { cp "$ws/s$seed/grid.png" "$out/grid.png"; break; }
done
tar -czf "$out/catalogs.tar.gz" -C "$ws/catalogs" . ||
  { say "no catalogs"; rm -f "$out/catalogs.tar.gz"; }

# One report for all seeds (experiment names are unique across the seeds' workspaces).
python3 - "$out/report.json" $(for s in $SEEDS; do echo "$ws/s$s/report.json"; done) <<'EOF'
import json, sys
rows = []
for path in sys.argv[2:]:
    try:
        with open(path) as f:
            rows += json.load(f)
    except (OSError, ValueError) as e:
        print(f"left out of report.json: {path} ({e})")
with open(sys.argv[1], "w") as f:
    json.dump(rows, f, indent=1)
EOF

say "Table 1 at the last round every method of a seed reached"
python3 recipes/summarize.py "$out/report.json" --paper table1 --rounds common --per-seed \
  --by-round --attacks

say "ICL diagnostics per seed (largest gradient norm over the rounds; divergence)"
python3 - "$out/report.json" "$ws" <<'EOF'
import json, math, os, re, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    if r["method"] != "icl":
        continue
    diag = {int(t): d for t, d in (r.get("diagnostics") or {}).items()}
    signs = []  # (round, why) of each sign of divergence
    for t, d in sorted(diag.items()):
        bad = [k for k, v in d.items() if v is not None and not math.isfinite(v)]
        if bad:
            signs.append((t, "non-finite " + ", ".join(bad)))
    # A NaN network predicts one class (~90 % test error); a smoke-scale C_0 is near that
    # too, so only an error far above C_0's counts.
    err0 = r["errors"].get("0", {}).get("test", 0.0)
    for t, e in sorted(r["errors"].items(), key=lambda te: int(te[0])):
        if e.get("test", 0.0) >= max(0.5, 2 * err0):
            signs.append((int(t), f"test error {100 * e['test']:.1f} %"))
    # A round that diverges now fails with nothing saved: its run's log says so.
    log = os.path.join(sys.argv[2], f"s{r['seed']}", f"{r['experiment']}.log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    for line in text.splitlines():
        if "diverged" in line or "NaN or infinite" in line:
            m = re.search(r"round (\d+)", line)
            signs.append((int(m[1]) if m else r["rounds"] + 1, line.strip()[:160]))
            break
    grads = {t: d["grad_norm_max"] for t, d in diag.items()
             if d.get("grad_norm_max") is not None}
    if grads:
        t = max(grads, key=lambda t: (not math.isfinite(grads[t]), grads[t]))
        peak = f"grad_norm_max {grads[t]:.3g} at round {t} (over rounds {min(grads)}-{max(grads)})"
    else:
        peak = "no grad_norm_max recorded"
    div = "; ".join(f"round {t}: {why}" for t, why in signs) if signs else "no"
    print(f"seed {r['seed']} {r['experiment']}: {r['rounds']} rounds, {peak}; diverged: {div}")
EOF
say "done ($(ls "$out" | wc -l) files in $out: $(ls "$out" | tr '\n' ' '))"
