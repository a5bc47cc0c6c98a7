#!/usr/bin/env bash
# Figure 5 (and Figure 4): MNIST test error against the number of training images,
# baseline vs ICL-noise vs ICL, paired per seed; test error against round.
#   SCALE=cpu MNIST_DIR=../shared/data/mnist bash recipes/figure5_train_size.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for size in $SIZES; do
  for seed in $SEEDS; do
    paired "$MODE-n$size-s$seed" "$seed" "$size" "${MNIST_DATA[@]}"
  done
done
summarize --plot-sizes "$WS/figure5.png" --plot-rounds "$WS/figure4.png"
echo "plots: $WS/figure5.png $WS/figure4.png"
