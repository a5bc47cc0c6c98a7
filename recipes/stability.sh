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
# CASES picks a subset by name.
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
  [lr5x]="--lr 0.05" [lr5x-clip]="--lr 0.05 --clip-grad $CLIP")
mkdir -p "$WS"
icl init "${RUN[@]}" -e stab-baseline --method baseline --seed "$SEED" --data-seed "$DATA_SEED" \
  "${MNIST_DATA[@]}" --train-size "$SIZE" --val-size "$VAL" --arch "$ARCH" \
  --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
  --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null || exit 1
one() {  # CASE: its run, logged to $WS/stab-CASE.log; a divergence is a result, not a failure
  # shellcheck disable=SC2086  # OPTS holds several words
  { icl init "${RUN[@]}" -e "stab-$1" --method icl --from stab-baseline:0 ${OPTS[$1]} &&
    icl run "${RUN[@]}" -e "stab-$1" --rounds "$ROUNDS"; } > "$WS/stab-$1.log" 2>&1 || true
}
cases=($CASES)
lane() { local i; for ((i = $1; i < ${#cases[@]}; i += LANES)); do one "${cases[i]}"; done; }
pids=()
for ((l = 0; l < LANES; l++)); do lane "$l" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
python "$(dirname "$0")/stability_table.py" "$WS" "${cases[@]/#/stab-}"
