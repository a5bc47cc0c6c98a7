# Shared by the recipes: scale presets and the paired baseline / ICL-noise / ICL loop.
# Source it from a recipe; every setting can be overridden from the environment.
#
#   SMOKE=1     seconds: tiny net, tiny data, 1 round, 1 seed (what CI runs)
#   SCALE=cpu   fits 2 CPU cores in minutes to an hour (the default)
#   SCALE=paper the paper's settings, for a GPU owner
#
# MNIST comes from MNIST_DIR (an IDX folder: the full MNIST) when set, else from the subset
# embedded in icl (6,000 train / 2,000 test images).

if [ "${SMOKE:-0}" = 1 ]; then SCALE=smoke; fi
SCALE=${SCALE:-cpu}
WS=${WS:-recipes-out/$(basename "$0" .sh)-$SCALE}
THREADS=${THREADS:-1}
# After C_0 the methods run one after another (LANES=1), in two processes at once (LANES=2:
# ICL beside the others; on 2 cores two 1-thread processes beat one 2-thread process), or
# each in its own process (LANES=3, for a GPU), with LANE_THREADS threads each.
LANES=${LANES:-1}
LANE_THREADS=${LANE_THREADS:-1}
# DEADLINE (seconds since the epoch): each `icl run` gets Ctrl-C then, keeping the rounds it
# finished; run the recipe again to go on (summarize.py --rounds common compares them).
DEADLINE=${DEADLINE:-}
DEVICE=${DEVICE:-auto}
RUN=(--workspace "$WS" --threads "$THREADS" --device "$DEVICE")
[ "${NO_MLFLOW:-0}" = 1 ] && RUN+=(--no-mlflow)

if [ -n "${MNIST_DIR:-}" ]; then
  MNIST_DATA=(--dataset idx --data-root "$MNIST_DIR")
else
  MNIST_DATA=(--dataset mnist-embedded)
fi

case "$SCALE" in
  smoke)
    ARCH=${ARCH:-tiny}; SEEDS=${SEEDS:-0}; ROUNDS=${ROUNDS:-1}; VAL=${VAL:-100}
    INIT_EPOCHS=${INIT_EPOCHS:-1}; EPOCHS=${EPOCHS:-1}; REAL_EPOCHS=${REAL_EPOCHS:-0}
    COUNT=${COUNT:-2}; MAX_STEPS=${MAX_STEPS:-5}; SIZES=${SIZES:-100} ;;
  cpu)
    ARCH=${ARCH:-mnist-cnn}; SEEDS=${SEEDS:-0 1 2 3 4}; ROUNDS=${ROUNDS:-5}; VAL=${VAL:-1000}
    INIT_EPOCHS=${INIT_EPOCHS:-10}; EPOCHS=${EPOCHS:-2}; REAL_EPOCHS=${REAL_EPOCHS:-1}
    COUNT=${COUNT:-20}; MAX_STEPS=${MAX_STEPS:-200}; SIZES=${SIZES:-500 2000} ;;
  paper)
    ARCH=${ARCH:-mnist-cnn}; SEEDS=${SEEDS:-0 1 2 3 4}; ROUNDS=${ROUNDS:-30}; VAL=${VAL:-5000}
    INIT_EPOCHS=${INIT_EPOCHS:-10}; EPOCHS=${EPOCHS:-5}; REAL_EPOCHS=${REAL_EPOCHS:-0}
    COUNT=${COUNT:-200}; MAX_STEPS=${MAX_STEPS:-200}; SIZES=${SIZES:-500 2000 10000 55000} ;;
  *) echo "unknown SCALE=$SCALE (smoke, cpu or paper)" >&2; exit 2 ;;
esac
MODE=${MODE:-softmax}
PN_WEIGHT=${PN_WEIGHT:-1}
PN_WEIGHTING=${PN_WEIGHTING:-per-sample}  # batch-mean (icl before eq. 11 was fixed), drawn
PN_RECENCY=${PN_RECENCY:-0.5}              # drawn: round weights r^age from the newest
CLIP_GRAD=${CLIP_GRAD:-}                  # a gradient-norm clip for reclassify (empty: off)
SAMPLER_LR=${SAMPLER_LR:-0.01}
REFERENCE_STD=${REFERENCE_STD:-0.3}
DECAY_ROUND=${DECAY_ROUND:-20}
METHODS=${METHODS:-baseline icl-noise icl}

# paired NAME_PREFIX SEED TRAIN_SIZE [extra init options...]
# One C_0 per (seed, size), shared by every method through --from; then the loop.
# TRAIN_SIZE "all" uses every training image not held out for validation.
paired() {
  local prefix=$1 seed=$2 size=$3; shift 3
  local base="$prefix-baseline" size_opt=() lever=()
  [ "$size" = all ] || size_opt=(--train-size "$size")
  [ -z "$CLIP_GRAD" ] || lever=(--clip-grad "$CLIP_GRAD")
  icl init "${RUN[@]}" -e "$base" --method baseline --seed "$seed" "$@" \
    "${size_opt[@]}" --val-size "$VAL" --arch "$ARCH" --mode "$MODE" \
    --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
    --pn-weight "$PN_WEIGHT" --pn-weighting "$PN_WEIGHTING" --pn-recency "$PN_RECENCY" \
    "${lever[@]}" \
    --decay-round "$DECAY_ROUND" --count "$COUNT" --max-steps "$MAX_STEPS" \
    --sampler-lr "$SAMPLER_LR" --reference-std "$REFERENCE_STD" >/dev/null
  if [ "$LANES" = 1 ]; then
    local m
    for m in $METHODS; do _method "$prefix-$m" "$m" "$THREADS" "$base"; done
    return
  fi
  # LANES experiments at once: one `icl run` over them all, a process per experiment, ICL
  # first (it is the longest: it also synthesises). Its output: $WS/<prefix>.log.
  local m names=()
  for m in $METHODS; do
    if [ "$m" != baseline ]; then
      icl init "${RUN[@]}" -e "$prefix-$m" --method "$m" --from "$base:0" >/dev/null
    fi
    if [ "$m" = icl ]; then names=(-e "$prefix-$m" "${names[@]}"); else names+=(-e "$prefix-$m"); fi
  done
  : > "$WS/$prefix.log"
  # EXECUTOR=slurm (or local) EXECUTOR_PARAMS="slurm_partition=gpu timeout_min=600": the
  # group as one submitit job array instead of local processes (icl run --executor).
  local submit=() kv
  if [ -n "${EXECUTOR:-}" ]; then
    submit=(--executor "$EXECUTOR")
    for kv in ${EXECUTOR_PARAMS:-}; do submit+=(--executor-param "$kv"); done
  fi
  _run "$WS/$prefix.log" "$prefix" --threads "$LANE_THREADS" --parallel "$LANES" \
    "${submit[@]}" "${names[@]}"
}

# _method NAME METHOD THREADS BASELINE [init options...]: unless METHOD is the baseline, init
# experiment NAME from BASELINE's C_0 (--from BASELINE:0, with the options); then run its
# rounds with THREADS threads. The output goes to $WS/NAME.log.
_method() {
  local name=$1 method=$2 threads=$3 base=$4
  shift 4
  : > "$WS/$name.log"
  if [ "$method" != baseline ]; then
    icl init "${RUN[@]}" -e "$name" --method "$method" --from "$base:0" "$@" \
      > /dev/null 2>> "$WS/$name.log" ||
      { echo "icl init -e $name failed:" >&2; tail -n 3 "$WS/$name.log" >&2; return 1; }
  fi
  _run "$WS/$name.log" "$name" --threads "$threads" -e "$name"
}

# _run LOG WHAT [icl run options...]: `icl run` (stopped by Ctrl-C at DEADLINE, if set) with
# its output appended to LOG; a failure prints the log's last lines.
_run() {
  local log=$1 what=$2 until=() rc=0
  shift 2
  if [ -n "$DEADLINE" ]; then
    local left=$((DEADLINE - $(date +%s)))
    until=(timeout -s INT -k 60 $((left > 1 ? left : 1)))
  fi
  "${until[@]}" icl run "${RUN[@]}" "$@" --rounds "$ROUNDS" >> "$log" 2>&1 || rc=$?
  if [ "$rc" = 124 ] && [ -n "$DEADLINE" ]; then
    echo "icl -e $what: stopped at the deadline (rerun to go on)" >&2
  elif [ "$rc" != 0 ]; then
    echo "icl -e $what failed:" >&2; tail -n 3 "$log" >&2; return 1
  fi
}

# best_round NAME: the round of NAME with the lowest validation error (its last round when
# it has no validation split), as `icl report` chooses it.
best_round() {
  icl report --workspace "$WS" --json --no-plot | python -c "import json, sys
r = {x['experiment']: x for x in json.load(sys.stdin)}['$1']
print(r['best_val_round'] if r['best_val_round'] is not None else r['rounds'])"
}

# summarize [summarize.py options...]: the markdown table of the workspace's experiments.
summarize() {
  icl report --workspace "$WS" --json > "$WS/report.json"
  python "$(dirname "${BASH_SOURCE[0]}")/summarize.py" "$WS/report.json" "$@"
}
