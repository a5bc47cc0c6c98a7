#!/usr/bin/env bash
# Figure 3: pseudo-negatives across rounds, one row per round, one column per class,
# read from the shards with plain h5py. Uses the Figure 5 workspace when it exists.
#   SCALE=cpu bash recipes/figure3_grids.sh
set -euo pipefail
WS=${WS:-recipes-out/figure5_train_size-${SCALE:-cpu}}
[ "${SMOKE:-0}" = 1 ] && WS=${WS/-cpu/-smoke}
source "$(dirname "$0")/lib.sh"
SIZE=${SIZE:-${SIZES%% *}}
EXP=${EXP:-$MODE-n$SIZE-s${SEEDS%% *}-icl}

if ! icl status --workspace "$WS" --json 2>/dev/null | grep -q "\"$EXP\""; then
  METHODS=icl paired "${EXP%-icl}" "${SEEDS%% *}" "$SIZE" "${MNIST_DATA[@]}"
fi
python "$(dirname "$0")/figure3_grid.py" "$WS" "$EXP" "$WS/figure3.png"
echo "grid: $WS/figure3.png"
