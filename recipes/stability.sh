#!/usr/bin/env bash
# Does ICL training stay finite, and does `icl run --recover N` save the runs that do not?
# From one C_0 per seed (500 images, the subset of data seed 0), ICL runs that once
# diverged, beside the same runs at today's defaults, and a stress case of our own; then
# one line per run: the round it diverged in (or "finished"), its largest gradient norm
# and |logit|, and its val-selected error.
#
#   SCALE=cpu MNIST_DIR=../shared/data/mnist LANES=2 bash recipes/stability.sh
# (the table: recipes/stability_table.py WS EXPERIMENT..., which reads the step log)
#
# With RECOVER=N each case also runs with `icl run --recover N` (stab-sS-CASE-rN), and each
# seed's baseline runs its rounds too; the table is then the paired recovery table
# (recipes/stability_table.py --recovery WS): per case and seed, with and without the
# recovery, how the run ended and its validation and test error against its baseline's
# from the same C_0. The measurement of RESULTS.md, one 1-thread lane per core:
#
#   SCALE=cpu MNIST_DIR=../shared/data/mnist NO_MLFLOW=1 CASES="lr5x old-w2" \
#     SEEDS="2 0 1" RECOVER=3 LANES=2 PIN="0 1" NICE=10 WS=... bash recipes/stability.sh
#
# Runs (each `icl init --from stab-sS-baseline:0` plus the options shown):
#   old-w2        --pn-weighting batch-mean --pn-weight 2  (diverged in round 4 before
#                 eq. 11 was fixed: RESULTS.md, "A sweep on validation")
#   new-w2        --pn-weight 2                             (per-sample, eq. 11)
#   new-w1        (the defaults)
#   lr5x          --lr 0.05                                 (5x the paper's rate)
#   lr5x-clip     --lr 0.05 --clip-grad $CLIP               (the lever, if it is needed)
#   full-old-w1   full MNIST (59,000 training images), 1 epoch per round, batch-mean: where
#                 the old weighting weighed a pseudo-negative as 27.5 real images (round 1)
#   full-new-w1   the same at today's defaults
#   (the full-* cases share their own C_0, stab-full-baseline: 2 epochs, no subset; about
#   40 minutes per case on one CPU core; they run once, not per seed)
# CASES picks a subset by name (default: the 500-image cases); SEEDS the C_0s' --seed
# (default 2, where the old code diverged; the data stays --data-seed 0's subset).
# LANES runs that many at once; PIN="0 1" pins lane i to core i of the list (taskset) and
# NICE=10 runs the lanes at that niceness.
set -uo pipefail
GIVEN_SEEDS=${SEEDS:-}  # lib.sh sets its own default
source "$(dirname "$0")/lib.sh"
CLIP=${CLIP:-10}
SEEDS=${GIVEN_SEEDS:-2}
case "$SCALE" in
  smoke) SIZE=100; DATA_SEED=0 ;;
  *) SIZE=500; DATA_SEED=0; INIT_EPOCHS=${STAB_INIT_EPOCHS:-40}
     EPOCHS=${STAB_EPOCHS:-4}; REAL_EPOCHS=${STAB_REAL_EPOCHS:-2} ;;
esac
CASES=${CASES:-old-w2 new-w2 new-w1 lr5x lr5x-clip}
RECOVER=${RECOVER:-}
pins=(${PIN:-})
declare -A OPTS=(
  [old-w2]="--pn-weighting batch-mean --pn-weight 2" [new-w2]="--pn-weight 2" [new-w1]=""
  [lr5x]="--lr 0.05" [lr5x-clip]="--lr 0.05 --clip-grad $CLIP"
  [full-old-w1]="--pn-weighting batch-mean" [full-new-w1]="")
mkdir -p "$WS"
cases=($CASES)
seeds=($SEEDS)

pinned() {  # LANE: this lane's shell (and so every icl it starts) on its core, at NICE
  [ ${#pins[@]} = 0 ] || taskset -cp "${pins[$1 % ${#pins[@]}]}" "$BASHPID" > /dev/null
  [ -z "${NICE:-}" ] || renice -n "$NICE" -p "$BASHPID" > /dev/null
}
in_lanes() {  # FUNCTION JOB...: the jobs spread over LANES lanes, each lane in order
  local fn=$1 l pids=(); shift
  local jobs=("$@")
  for ((l = 0; l < LANES; l++)); do
    ( pinned "$l"; for ((i = l; i < ${#jobs[@]}; i += LANES)); do "$fn" "${jobs[i]}"; done ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

c0() {  # SEED: its C_0, stab-sSEED-baseline (full: the full-size C_0 of the full-* cases)
  if [ "$1" = full ]; then
    local full_size=()
    [ "$SCALE" = smoke ] && full_size=(--train-size 300)
    icl init "${RUN[@]}" -e stab-full-baseline --method baseline --seed 0 "${MNIST_DATA[@]}" \
      "${full_size[@]}" --val-size "$VAL" --arch "$ARCH" \
      --init-epochs "$([ "$SCALE" = smoke ] && echo 1 || echo 2)" --epochs 1 --real-epochs 0 \
      --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null || echo "C_0 of full failed" >&2
    return
  fi
  icl init "${RUN[@]}" -e "stab-s$1-baseline" --method baseline --seed "$1" \
    --data-seed "$DATA_SEED" "${MNIST_DATA[@]}" --train-size "$SIZE" --val-size "$VAL" \
    --arch "$ARCH" --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" \
    --real-epochs "$REAL_EPOCHS" --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null ||
    echo "C_0 of seed $1 failed" >&2
}

one() {  # SEED:CASE[:N]: its run (N: with --recover N), logged to $WS/<name>.log; a
  # divergence is a result, not a failure
  local seed case recover name base
  IFS=: read -r seed case recover <<< "$1"
  if [ "$case" = baseline ]; then
    icl run "${RUN[@]}" -e "stab-s$seed-baseline" --rounds "$ROUNDS" \
      > "$WS/stab-s$seed-baseline.log" 2>&1 || true
    return
  fi
  base="stab-s$seed-baseline" name="stab-s$seed-$case"
  if [[ $case == full-* ]]; then base=stab-full-baseline name="stab-$case"; fi
  local again=()
  if [ -n "$recover" ]; then name+="-r$recover"; again=(--recover "$recover"); fi
  # shellcheck disable=SC2086  # OPTS holds several words
  { icl init "${RUN[@]}" -e "$name" --method icl --from "$base:0" ${OPTS[$case]} &&
    icl run "${RUN[@]}" -e "$name" --rounds "$ROUNDS" "${again[@]}"; } \
    > "$WS/$name.log" 2>&1 || true
}

bases=("${seeds[@]}")
[[ " $CASES " == *" full-"* ]] && bases+=(full)
in_lanes c0 "${bases[@]}"
runs=() names=()
for s in "${seeds[@]}"; do
  for c in "${cases[@]}"; do
    [[ $c == full-* ]] && continue
    [ -z "$RECOVER" ] || runs+=("$s:$c:$RECOVER")  # the longest first
    runs+=("$s:$c")
    names+=("stab-s$s-$c")
  done
  [ -z "$RECOVER" ] || runs+=("$s:baseline")
done
for c in "${cases[@]}"; do
  if [[ $c == full-* ]]; then runs+=("${seeds[0]}:$c"); names+=("stab-$c"); fi
done
in_lanes one "${runs[@]}"
if [ -n "$RECOVER" ]; then
  python "$(dirname "$0")/stability_table.py" --recovery "$WS"
else
  python "$(dirname "$0")/stability_table.py" "$WS" "${names[@]}"
fi
