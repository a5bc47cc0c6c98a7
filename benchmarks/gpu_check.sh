#!/usr/bin/env bash
# One time-boxed pass on a CUDA machine lent for minutes. It always ends within HARD
# seconds (default 530: under 9 minutes, one device call of 540 s) and prints what it has.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          on the GPU (OUT_DIR default: $OUT, else
#                                                   gpu-check-out)
#   bash benchmarks/gpu_check.sh --smoke [OUT_DIR]  the same script on the CPU in about a
#                                                   minute (tiny net, 100 images, 1 round)
#
# What it runs, in order:
#   1. the figures a shell loop pays for (the GPU to itself, ~40 s): one experiment, each
#      step a fresh `icl` call like a user's loop: per-call overhead (s: the whole call
#      less the step's own seconds, and the time before its work starts), images/s of
#      reclassify (first and last epoch: the first holds cuDNN's warm-up), ms per
#      pseudo-negative per sampler step, and a finished step called again;
#   2. Table 1 (softmax) at the paper's settings (recipes/lib.sh, SCALE=paper) for SEEDS
#      (default "0 1 2 3 4") at once, each method in its own process (LANES=3: 15 `icl run`
#      on the one GPU), stopped by Ctrl-C at BUDGET - TAIL s (the rounds finished are
#      kept). Beside it (EXTRAS=1), each cut at that deadline: pytest -m gpu, reclassify
#      with channels_last / torch.compile against the default (benchmarks.reclassify
#      --variants), reclassify and the sampler against bare PyTorch loops;
#   3. in the last TAIL s, per seed at once: its report, two-way FGSM between its baseline
#      and ICL, ICL's pseudo-negative grid;
#   4. the table at the last round all methods of a seed reached, labelled PARTIAL with
#      the rounds reached of the paper's 30; ICL's diagnostics per seed; the step times
#      under sharing; GPU utilisation per phase (nvidia-smi, sampled every second).
# Reclassification weighs the pool as the reproduction study chose (--pn-weighting
# per-sample, ICL eq. 11; set here, so no PN_WEIGHTING in the environment overrides it).
#
# What a bare device machine lacks, it takes from the working tree it is copied with:
#   - MNIST: MNIST_DIR (an IDX folder), else .gpu/mnist if it holds the files, else the
#     subset embedded in icl (icl_cli/embedded: 6,000 training / 2,000 test images). On the
#     subset, Table 1 trains on 5,000 images (VAL=1000) instead of 55,000: the pipeline and
#     the timings are the real ones, the test errors are not comparable to the paper's;
#     the output says which data it used on every table.
#   - Python packages: the image has torch, typer, rich, h5py, matplotlib, but not
#     SQLAlchemy. Carry wheels in .whl/ (WHEELS=dir), e.g. here:
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_17_x86_64 -d .whl sqlalchemy==2.1.9
#     and they are installed to /tmp/site. MLflow stays off (--no-mlflow).
#
# Files in OUT_DIR (at most 5; the device tool returns at most 8, each < 16 MiB):
#   log.txt, report.json (`icl report --json` of every seed, one list: summarize.py reads it),
#   catalogs.tar.gz (catalog-s<seed>.db per seed: benchmarks.step_times), bench.json
#   (EXTRAS=1), grid.png (ICL's pseudo-negatives of the first seed with an ICL round).
# Settings (environment): SEEDS, BUDGET (default 480: the work before the final reports),
# TAIL (90), HARD (530), EXTRAS (1), THREADS (2: each C_0), LANE_THREADS (1), DEVICE (cuda),
# SCALE (paper), ROUNDS (30), WS (/tmp/gpu-table1).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --smoke ]; then shift; export SMOKE=1; fi
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
if [ "${SMOKE:-0}" = 1 ]; then
  export DEVICE=${DEVICE:-cpu} ARCH=${ARCH:-tiny} SEEDS=${SEEDS:-0} EXTRAS=${EXTRAS:-0} SCALE=smoke
  export BUDGET=${BUDGET:-120} TAIL=${TAIL:-40} HARD=${HARD:-150} THREADS=${THREADS:-1}
  export METHODS=${METHODS:-baseline icl}
fi
HARD=${HARD:-530}

# The hard time box: the whole pass runs under `timeout`; past HARD s it is stopped and
# this outer shell says so, after what the pass printed. Every process of the pass carries
# a token in its environment, by which the ones its nested timeouts kept in process
# groups of their own are found and stopped too (and nothing else).
stop_pass() {
  local sig p
  for sig in TERM KILL; do
    for p in /proc/[0-9]*; do
      grep -qzx "_GPU_CHECK_PASS=$1" "$p/environ" 2>/dev/null && kill "-$sig" "${p#/proc/}" 2>/dev/null
    done
    [ "$sig" = TERM ] && sleep 2
  done
}
if [ -z "${_GPU_CHECK_PASS:-}" ]; then
  t_start=$(date +%s)
  token=$$-$(date +%s%N)
  _GPU_CHECK_PASS=$token timeout -k 5 "$HARD" bash "$0" "$out"
  rc=$?
  stop_pass "$token"
  if ((rc == 124 || rc == 137)); then
    echo "[$(($(date +%s) - t_start)) s] STOPPED at the hard limit of $HARD s: the lines" \
      "above and the files in $out are all this pass has (PARTIAL)" | tee -a "$out/log.txt"
  fi
  exit "$rc"
fi

exec > >(tee -a "$out/log.txt") 2>&1
t0=$(date +%s)
BUDGET=${BUDGET:-480}
TAIL=${TAIL:-90}
END=$((t0 + BUDGET))
export DEADLINE=$((END - TAIL))
export DEVICE=${DEVICE:-cuda} NO_MLFLOW=1 LANES=3 LANE_THREADS=${LANE_THREADS:-1}
export THREADS=${THREADS:-2} SCALE=${SCALE:-paper} ARCH=${ARCH:-mnist-cnn}
export PN_WEIGHTING=per-sample PN_WEIGHT=1  # the reproduction study's default
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-0 1 2 3 4}
ROUNDS_GOAL=${ROUNDS:-30}
[ "${SMOKE:-0}" = 1 ] && ROUNDS_GOAL=${ROUNDS:-1}
ws=${WS:-/tmp/gpu-table1}
say() { echo "[$(($(date +%s) - t0)) s] $*"; }
# within CAP CMD...: CMD with a limit of CAP seconds or what is left before the deadline.
within() {
  local cap=$1 left=$((DEADLINE - $(date +%s))); shift
  if ((left < 10)); then say "skipped at the deadline: $*" >&2; return 0; fi
  timeout -k 5 $((left < cap ? left : cap)) "$@"
}
# before_end RESERVE CMD...: CMD, stopped RESERVE seconds before the end of the budget.
before_end() {
  local left=$((END - $1 - $(date +%s))); shift
  if ((left < 5)); then say "skipped at the end of the budget: $*" >&2; return 1; fi
  local rc=0
  timeout -k 5 "$left" "$@" || rc=$?
  ((rc == 124 || rc == 137)) && say "stopped at the end of the budget: $*" >&2
  return $rc
}
phase() { echo "$1 $(date +%s)" >> "$ws/phases.txt"; }

# --- what the machine lacks --------------------------------------------------------
if ! python3 -c "import sqlalchemy" 2>/dev/null; then
  wheels=${WHEELS:-.whl}
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    say "SQLAlchemy is missing and $wheels/ holds no wheels: carry them (see the header)"
    exit 2
  fi
  rm -rf /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site "$wheels"/*.whl || { say "wheels did not install"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# icl from this checkout when it is not installed (a bare GPU image).
if ! command -v icl >/dev/null; then
  mkdir -p /tmp/icl-bin
  printf '#!/bin/sh\nexec python3 -m icl_cli "$@"\n' > /tmp/icl-bin/icl
  chmod +x /tmp/icl-bin/icl
  command -v python >/dev/null || ln -sf "$(command -v python3)" /tmp/icl-bin/python
  export PATH=/tmp/icl-bin:$PATH PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${MNIST_DIR:-}" ] && [ -s .gpu/mnist/train-images-idx3-ubyte.gz ]; then
  MNIST_DIR=$PWD/.gpu/mnist
fi
if [ -n "${MNIST_DIR:-}" ]; then
  export MNIST_DIR
  data=(--dataset idx --data-root "$MNIST_DIR")
  data_note="full MNIST ($MNIST_DIR)"
else
  unset MNIST_DIR
  data=(--dataset mnist-embedded)
  if [ "${SMOKE:-0}" = 1 ]; then
    data_note="the MNIST subset embedded in icl (smoke: 100 training images)"
  else
    export VAL=${VAL:-1000}
    data_note="the MNIST subset embedded in icl (5,000 training images, 1,000 validation,"
    data_note="$data_note 2,000 test): NOT Table 1's 55,000, errors not comparable to the paper"
  fi
fi

rm -rf "$ws" && mkdir -p "$ws"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
[ "${SMOKE:-0}" = 1 ] ||
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
say "data: $data_note; --pn-weighting $PN_WEIGHTING; budget $BUDGET s (tail $TAIL s)," \
  "hard limit $HARD s"
util_pid=
if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
  (while :; do
     echo "$(date +%s) $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
       --format=csv,noheader,nounits | head -n 1 | tr -d ' ')"
     sleep 1
   done) > "$ws/util.txt" 2>/dev/null &
  util_pid=$!
fi

# --- 1. what a call costs, what the steps do per second -------------------------------
# timed NAME CMD...: CMD's output in $m/NAME.json, its start and end in $m/times.txt, the
# moment its work started in $m/NAME.mark (ICL_MARK_WORK_START, where icl writes it).
m=$ws/measure
mkdir -p "$m"
timed() {
  local name=$1 s e; shift
  s=$(date +%s.%N)
  ICL_MARK_WORK_START=$m/$name.mark before_end 0 "$@" > "$m/$name.json" 2> "$m/$name.err" ||
    { say "$name failed:"; tail -n 3 "$m/$name.err"; }
  e=$(date +%s.%N)
  echo "$name $s $e" >> "$m/times.txt"
}
if [ "${SMOKE:-0}" = 1 ]; then msize=(--train-size 200 --val-size 100 --count 5 --max-steps 10)
else msize=(--train-size 5000 --val-size 1000 --count 200 --max-steps 200); fi
mrun=(--workspace "$m/ws" --device "$DEVICE" --no-mlflow --threads "$THREADS")
measure() {
  say "per-call figures: one experiment ($ARCH), each step a fresh icl call"
  timed init icl init "${mrun[@]}" -e m --arch "$ARCH" "${data[@]}" "${msize[@]}" \
    --init-epochs 1 --epochs 3 --pn-weighting per-sample --json
  timed synthesize icl synthesize "${mrun[@]}" -e m --round 1 --json
  timed reclassify icl reclassify "${mrun[@]}" -e m --round 1 --json
  timed synthesize-finished icl synthesize "${mrun[@]}" -e m --round 1 --json
  python3 - "$m" <<'EOF'
import json, os, sys
m = sys.argv[1]
def doc(name):
    try:
        return json.load(open(f"{m}/{name}.json"))
    except (OSError, ValueError):
        return {}
print("| call | whole call s | in the step s | overhead s | before its work s |")
print("| --- | --- | --- | --- | --- |")
for line in open(f"{m}/times.txt"):
    name, s, e = line.split()
    d, wall = doc(name), float(e) - float(s)
    step = d.get("seconds")
    mark = f"{m}/{name}.mark"
    before = (f"{float(open(mark).read().split()[1]) - float(s):.2f}"
              if os.path.exists(mark) and open(mark).read().strip() else "-")
    print(f"| icl {name} | {wall:.2f} | {'-' if step is None else round(step, 2)} | "
          f"{'-' if step is None else round(wall - step, 2)} | {before} |")
r = doc("reclassify").get("epochs") or []
if r:
    rates = [e["samples"] / e["seconds"] for e in r if e["seconds"]]
    total = sum(e["samples"] for e in r) / sum(e["seconds"] for e in r)
    print(f"reclassify: {total:.0f} images/s over {len(r)} epochs of {r[0]['samples']} rows "
          f"(first epoch {rates[0]:.0f}, last {rates[-1]:.0f} images/s)")
s = doc("synthesize")
if s.get("count") and s.get("mean_steps"):
    steps = s["count"] * s["mean_steps"]
    print(f"sampler: {1e3 * s['seconds'] / steps:.3f} ms per pseudo-negative per step "
          f"({s['count']} samples, {s['mean_steps']:.1f} steps each on average, "
          f"{s['seconds']:.2f} s; JEM's SGLD: ~1.7 ms per image-step on a V100)")
EOF
}
# On the GPU the figures come first, the GPU to themselves; the CPU smoke runs them beside
# Table 1, to end in about a minute.
phase measure
if [ "${SMOKE:-0}" = 1 ]; then
  measure > "$ws/measure.txt" 2>&1 &
  measure_pid=$!
else
  measure
fi

# --- 2. Table 1, and beside it the GPU tests and benchmarks ---------------------------
phase table1
say "Table 1 ($SCALE, $data_note): seeds $SEEDS in the background, deadline in" \
  "$((DEADLINE - $(date +%s))) s"
pids=()
for seed in $SEEDS; do
  # the recipe's runs get Ctrl-C at DEADLINE; its C_0 has no deadline of its own
  cap=$((DEADLINE + 45 - $(date +%s)))
  WS=$ws/s$seed SEEDS=$seed MODES=softmax timeout -k 10 $((cap > 1 ? cap : 1)) \
    bash recipes/table1_mnist.sh > "$ws/s$seed.out" 2>&1 &
  pids+=($!)
done
if [ "${EXTRAS:-1}" = 1 ]; then  # by priority: each is cut at the deadline
  say "pytest -m gpu"
  within 180 python3 -m pytest -m gpu -q -p no:cacheprovider tests/cli/test_cli_gpu.py 2>&1 |
    tail -n 15
  say "reclassify with channels_last / torch.compile, interleaved with the default"
  within 60 python3 -m benchmarks.reclassify --variants --device "$DEVICE" \
    --names default,channels_last
  within 150 python3 -m benchmarks.reclassify --variants --device "$DEVICE" \
    --names default,compile,compile+channels_last
  say "reclassify and the sampler against bare PyTorch loops (benchmarks --quick)"
  within 120 python3 -m benchmarks --quick --device "$DEVICE" --only reclassify,synthesis \
    --json > "$out/bench.json" 2> "$ws/bench.err" || tail -n 5 "$ws/bench.err"
  [ -s "$out/bench.json" ] || rm -f "$out/bench.json"
fi
if [ -n "${measure_pid:-}" ]; then wait "$measure_pid"; cat "$ws/measure.txt"; fi
say "waiting for Table 1"
for p in "${pids[@]}"; do wait "$p" || say "a Table 1 recipe exited with $? (see below)"; done
for seed in $SEEDS; do
  say "seed $seed:"; cat "$ws/s$seed.out"; tail -n 4 "$ws"/s$seed/*.log 2>/dev/null
done

# --- 3. per seed: report, FGSM, grid ---------------------------------------------------
phase tail
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
# tail_seed SEED: the seed's report, FGSM between its baseline and ICL, ICL's grid, the
# report again with the FGSM records, and a copy of its catalog. Each seed on its own.
tail_seed() {
  local seed=$1 w=$ws/s$seed a b last grid
  before_end 10 icl report --workspace "$w" --json --no-plot > "$w/report.json" ||
    { say "seed $seed: no report"; rm -f "$w/report.json"; return 1; }
  if read -r a b last < <(rounds "$w/report.json"); then
    say "FGSM seed $seed: icl round $a vs baseline round $b (last common round $last)"
    before_end 15 icl attack --workspace "$w" --device "$DEVICE" --no-mlflow \
      -e "softmax-s$seed-icl" --round "$a" --against "softmax-s$seed-baseline:$b" \
      --eps 0.125 --json > "$w/attack.json" &
    if [ "$last" -gt 0 ]; then
      grid=$(before_end 15 icl inspect --workspace "$w" -e "softmax-s$seed-icl" --round "$last" \
        --json | python3 -c "import json, sys; print(json.load(sys.stdin)['grid'])" 2>/dev/null) &&
        cp "$grid" "$w/grid.png"
    fi
    wait
    if [ -s "$w/attack.json" ] && python3 recipes/attack_table.py < "$w/attack.json"; then
      before_end 5 icl report --workspace "$w" --json --no-plot > "$w/report.json.new" &&
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
tar -czf "$out/catalogs.tar.gz" -C "$ws/catalogs" . 2>/dev/null ||
  { say "no catalogs"; rm -f "$out/catalogs.tar.gz"; }

# --- 4. what it got ---------------------------------------------------------------------
phase report
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

say "Table 1 at the last round every method of a seed reached ($data_note)"
python3 - "$out/report.json" "$ROUNDS_GOAL" <<'EOF'
import json, sys
rows, goal = json.load(open(sys.argv[1])), int(sys.argv[2])
short = sorted((r["rounds"], r["experiment"]) for r in rows if r["rounds"] < goal)
if not rows:
    print("PARTIAL: no experiment reported")
elif short:
    print(f"PARTIAL (time-boxed): {len(short)} of {len(rows)} runs stopped before round "
          f"{goal}: " + ", ".join(f"{e} at {t}" for t, e in short))
else:
    print(f"all {len(rows)} runs reached round {goal}")
EOF
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
    # A round that diverges fails with nothing saved: its run's log says so.
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
if ls "$ws"/catalogs/*.db >/dev/null 2>&1; then
  say "step times of the Table 1 runs (the GPU shared by all of them)"
  python3 -m benchmarks.step_times "$ws"/catalogs/*.db
fi
if [ -n "$util_pid" ]; then
  kill "$util_pid" 2>/dev/null
  say "GPU utilisation (nvidia-smi every second; mean / max %, max memory MiB)"
  python3 - "$ws/util.txt" "$ws/phases.txt" <<'EOF'
import sys
samples = []
for line in open(sys.argv[1]):
    try:
        t, rest = line.split()
        util, mem = rest.split(",")[:2]
        samples.append((int(t), float(util), float(mem)))
    except ValueError:
        pass
phases = [(n, int(t)) for n, t in (line.split() for line in open(sys.argv[2]))]
bounds = phases + [("end", 1 << 62)]
for (name, a), (_, b) in zip(bounds, bounds[1:]):
    xs = [s for s in samples if a <= s[0] < b]
    if xs:
        u = [s[1] for s in xs]
        print(f"{name:10s} {sum(u) / len(u):5.1f} / {max(u):5.1f} %  "
              f"{max(s[2] for s in xs):8.0f} MiB  ({len(xs)} samples)")
EOF
fi
say "done ($(ls "$out" | wc -l) files in $out: $(ls "$out" | tr '\n' ' '))"
