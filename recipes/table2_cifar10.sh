#!/usr/bin/env bash
# Table 2: CIFAR-10, ResNet-32, softmax and one-vs-all, without and with augmentation.
# Needs the CIFAR-10 python files in CIFAR_DIR (or DOWNLOAD=1 when online); SMOKE=1 runs
# the same loop on small fake data of CIFAR's shape.
#   SCALE=paper CIFAR_DIR=~/data bash recipes/table2_cifar10.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = smoke ]; then
  DATA=(--dataset fake-cifar10 --batch-size 32); ARCH=${ARCH_CIFAR:-tiny}; VAL=20; SIZE=100
else
  DATA=(--dataset cifar10 --data-root "${CIFAR_DIR:?set CIFAR_DIR}" --batch-size 128)
  [ "${DOWNLOAD:-0}" = 1 ] && DATA+=(--download)
  ARCH=${ARCH_CIFAR:-resnet32}; SIZE=all
fi

for aug in no-aug aug; do
  extra=(); [ "$aug" = aug ] && extra=(--augment)
  for mode in ${MODES:-softmax ova}; do
    MODE=$mode
    for seed in $SEEDS; do
      paired "$aug-$mode-s$seed" "$seed" "$SIZE" "${DATA[@]}" "${extra[@]}"
    done
  done
done
icl report --workspace "$WS" --json --no-plot > "$WS/report.json"
for aug in no-aug aug; do
  echo "## $aug"
  python - "$WS/report.json" "$aug" <<'PY' > "$WS/report-$aug.json"
import json, sys
rows = json.load(open(sys.argv[1]))
print(json.dumps([r for r in rows if r["experiment"].startswith(sys.argv[2] + "-")]))
PY
  python "$(dirname "$0")/summarize.py" "$WS/report-$aug.json" --paper "table2-${aug/no-aug/noaug}"
done
