#!/usr/bin/env bash
# Table 3: SVHN (train + extra), ResNet-32, softmax, no augmentation.
# Needs train_32x32.mat, extra_32x32.mat, test_32x32.mat in SVHN_DIR (scipy installed);
# SMOKE=1 runs the same loop on small fake data of SVHN's shape.
#   SCALE=paper SVHN_DIR=~/data/svhn bash recipes/table3_svhn.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = smoke ]; then
  DATA=(--dataset fake-svhn --batch-size 32); ARCH=${ARCH_SVHN:-resnet8}; VAL=20; SIZE=100
else
  DATA=(--dataset svhn --data-root "${SVHN_DIR:?set SVHN_DIR}" --batch-size 128)
  [ "${DOWNLOAD:-0}" = 1 ] && DATA+=(--download)
  ARCH=${ARCH_SVHN:-resnet32}; SIZE=all
fi
MODE=softmax
for seed in $SEEDS; do
  paired "softmax-s$seed" "$seed" "$SIZE" "${DATA[@]}"
done
summarize --paper table3
