#!/usr/bin/env bash
# Does ICL training stay finite? (issue 11, part 3.) From one C_0 (500 images, seed 2, the
# subset of data seed 0), ICL runs that once diverged, beside the same runs at today's
# defaults, and a stress case of our own; then one line per run: the round it diverged
# in (or "finished"), its largest gradient norm and |logit|, and its val-selected error.
#
#   SCALE=cpu MNIST_DIR=../shared/data/mnist LANES=2 bash recipes/stability.sh
# (the table: recipes/stability_table.py WS EXPERIMENT..., which reads the step log)
#
# Runs (each `icl init --from stab-baseline:0` plus the options shown):
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
#   40 minutes per case on one CPU core)
# CASES picks a subset by name (default: the 500-image cases).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
CLIP=${CLIP:-10}
case "$SCALE" in
  smoke) SIZE=100; DATA_SEED=0; SEED=2 ;;
  *) SIZE=500; DATA_SEED=0; SEED=2; INIT_EPOCHS=${STAB_INIT_EPOCHS:-40}
     EPOCHS=${STAB_EPOCHS:-4}; REAL_EPOCHS=${STAB_REAL_EPOCHS:-2} ;;
esac
CASES=${CASES:-old-w2 new-w2 new-w1 lr5x lr5x-clip}
declare -A OPTS=(
  [old-w2]="--pn-weighting batch-mean --pn-weight 2" [new-w2]="--pn-weight 2" [new-w1]=""
  [lr5x]="--lr 0.05" [lr5x-clip]="--lr 0.05 --clip-grad $CLIP"
  [full-old-w1]="--pn-weighting batch-mean" [full-new-w1]="")
mkdir -p "$WS"
icl init "${RUN[@]}" -e stab-baseline --method baseline --seed "$SEED" --data-seed "$DATA_SEED" \
  "${MNIST_DATA[@]}" --train-size "$SIZE" --val-size "$VAL" --arch "$ARCH" \
  --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
  --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null || exit 1
if [[ " $CASES " == *" full-"* ]]; then  # the full-size C_0 of the full-* cases
  FULL_SIZE=()
  [ "$SCALE" = smoke ] && FULL_SIZE=(--train-size 300)
  icl init "${RUN[@]}" -e stab-full-baseline --method baseline --seed 0 "${MNIST_DATA[@]}" \
    "${FULL_SIZE[@]}" --val-size "$VAL" --arch "$ARCH" \
    --init-epochs "$([ "$SCALE" = smoke ] && echo 1 || echo 2)" --epochs 1 --real-epochs 0 \
    --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null || exit 1
fi
one() {  # CASE: its run, logged to $WS/stab-CASE.log; a divergence is a result, not a failure
  local base=stab-baseline
  [[ $1 == full-* ]] && base=stab-full-baseline
  # shellcheck disable=SC2086  # OPTS holds several words
  { icl init "${RUN[@]}" -e "stab-$1" --method icl --from "$base:0" ${OPTS[$1]} &&
    icl run "${RUN[@]}" -e "stab-$1" --rounds "$ROUNDS"; } > "$WS/stab-$1.log" 2>&1 || true
}
cases=($CASES)
lane() { local i; for ((i = $1; i < ${#cases[@]}; i += LANES)); do one "${cases[i]}"; done; }
pids=()
for ((l = 0; l < LANES; l++)); do lane "$l" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
python "$(dirname "$0")/stability_table.py" "$WS" "${cases[@]/#/stab-}"
