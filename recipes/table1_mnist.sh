#!/usr/bin/env bash
# Table 1: MNIST test error, baseline / ICL-noise / ICL, softmax and one-vs-all,
# on the whole training set (less the validation split). Paper: 30 rounds, 200 per class.
#   SCALE=cpu MNIST_DIR=../shared/data/mnist bash recipes/table1_mnist.sh
set -euo pipefail
if [ "${SCALE:-cpu}" = cpu ] && [ "${SMOKE:-0}" != 1 ]; then
  # What fits 2 CPU cores in about an hour per mode: 1 seed, 3 rounds of 1 epoch.
  SEEDS=${SEEDS:-0}; ROUNDS=${ROUNDS:-3}; INIT_EPOCHS=${INIT_EPOCHS:-2}; EPOCHS=${EPOCHS:-1}
  REAL_EPOCHS=${REAL_EPOCHS:-0}; COUNT=${COUNT:-200}; VAL=${VAL:-5000}
fi
source "$(dirname "$0")/lib.sh"
[ "$SCALE" = smoke ] && TABLE1_SIZE=${TABLE1_SIZE:-100} || TABLE1_SIZE=${TABLE1_SIZE:-all}

for mode in ${MODES:-softmax ova}; do
  MODE=$mode
  for seed in $SEEDS; do
    paired "$mode-s$seed" "$seed" "$TABLE1_SIZE" "${MNIST_DATA[@]}"
  done
done
summarize --paper table1
