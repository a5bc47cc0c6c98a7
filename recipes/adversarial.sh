#!/usr/bin/env bash
# Paper 4.1, robustness: FGSM (eps 0.125) two-way between the baseline and ICL.
# Uses the Table 1 workspace when it exists (WS=...), else trains the pair first.
#   SCALE=cpu MNIST_DIR=../shared/data/mnist bash recipes/adversarial.sh
set -euo pipefail
WS=${WS:-recipes-out/table1_mnist-${SCALE:-cpu}}
[ "${SMOKE:-0}" = 1 ] && WS=${WS/-cpu/-smoke}
source "$(dirname "$0")/lib.sh"
EPS=${EPS:-0.125}
PREFIX=${PREFIX:-softmax-s${SEEDS%% *}}

if ! icl status --workspace "$WS" --json 2>/dev/null | grep -q "\"$PREFIX-icl\""; then
  METHODS="baseline icl" paired "$PREFIX" "${SEEDS%% *}" "${TRAIN_SIZE:-all}" "${MNIST_DATA[@]}"
fi
# Each model at the round chosen on validation error.
A=$(best_round "$PREFIX-icl"); B=$(best_round "$PREFIX-baseline")
echo "## FGSM eps $EPS: $PREFIX-icl round $A vs $PREFIX-baseline round $B"
echo
icl attack "${RUN[@]}" -e "$PREFIX-icl" --round "$A" --against "$PREFIX-baseline:$B" \
  --eps "$EPS" --json | python "$(dirname "$0")/attack_table.py"
