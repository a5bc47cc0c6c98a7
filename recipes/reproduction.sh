#!/usr/bin/env bash
# What reproduces the paper: ICL's reclassify step with each batch composition
# (--pn-weighting: eq. 11's per-sample sum, batch-mean, the authors' drawn batches), paired
# per seed from one C_0, the same ROUNDS for every row (the baseline too), each model
# taken at its best validation round; then FGSM two-way (eps 0.125) between every ICL row
# and its baseline, each at its best validation round.
#
#   SCALE=cpu MNIST_DIR=../shared/data/mnist SIZE=2000 SEEDS="0 1 2 3 4" ROUNDS=10 \
#     WS=runs/repro-n2000 bash recipes/reproduction.sh
#
# One seed's group runs as one process at a time (run several invocations with other
# SEEDS side by side, one per core); rerun to resume. A run that diverges keeps its rounds
# up to the divergence; the rest of its group goes on.
#   FORMS="drawn" ...            only some forms
#   EXTRA="w5=--pn-weight 5"     one more ICL row per seed, NAME=OPTIONS (on top of
#                                eq. 11's default form)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE=${SIZE:-${SIZES%% *}}  # one training-set size (SMOKE: 100)
FORMS=${FORMS-per-sample batch-mean drawn}
EXTRA=${EXTRA:-}
EPS=${EPS:-0.125}

failed=0
for seed in $SEEDS; do
  p="$MODE-n$SIZE-s$seed"
  LANES=1 METHODS=baseline paired "$p" "$seed" "$SIZE" "${MNIST_DATA[@]}" || failed=1
  rows=()
  for form in $FORMS; do
    _method "$p-icl-$form" icl "$THREADS" "$p-baseline" --pn-weighting "$form" || failed=1
    rows+=("$p-icl-$form")
  done
  if [ -n "$EXTRA" ]; then
    name=${EXTRA%%=*}
    # shellcheck disable=SC2086  # the options are words
    _method "$p-icl-$name" icl "$THREADS" "$p-baseline" ${EXTRA#*=} || failed=1
    rows+=("$p-icl-$name")
  fi
  b=$(best_round "$p-baseline")
  for row in "${rows[@]}"; do
    a=$(best_round "$row") || continue
    [ -n "$a" ] || continue  # no round evaluated (init failed)
    icl attack "${RUN[@]}" -e "$row" --round "$a" --against "$p-baseline:$b" --eps "$EPS" \
      >> "$WS/$row.log" 2>&1 || { echo "icl attack -e $row failed" >&2; failed=1; }
  done
done
summarize --rounds "$ROUNDS" --keep-stopped --val --per-seed --by-round --attacks
exit $failed
