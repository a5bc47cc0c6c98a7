#!/usr/bin/env bash
# Issue 13, beyond test error: calibration (NLL, ECE), out-of-distribution detection (AUROC
# per set and score), L-inf PGD robust accuracy and sample quality (last round), baseline vs ICL-noise vs ICL, paired per
# seed on the Figure 5 pairs (SIZE training images), each model at its best-validation round.
#   SCALE=cpu MNIST_DIR=../shared/data/mnist bash recipes/beyond_accuracy.sh
#   SMOKE=1 NO_MLFLOW=1 bash recipes/beyond_accuracy.sh     (seconds, what CI runs)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE=${SIZE:-$([ "$SCALE" = smoke ] && echo 100 || echo 2000)}
EPS_LIST=${EPS_LIST:-$([ "$SCALE" = smoke ] && echo 0.1 || echo "0.1 0.2 0.3")}
PGD_STEPS=${PGD_STEPS:-$(case "$SCALE" in smoke) echo 3 ;; cpu) echo 20 ;; *) echo 40 ;; esac)}
PGD_RESTARTS=${PGD_RESTARTS:-1}
# At cpu scale, PGD on the first PGD_LIMIT test images (500 of 10,000: each costs 20
# gradient steps per model and eps) and OOD on the first OOD_LIMIT (2,000, against 2,000 of
# each set); empty: all of them (the paper scale's default).
PGD_LIMIT=${PGD_LIMIT-$([ "$SCALE" = cpu ] && echo 500 || echo "")}
OOD_LIMIT=${OOD_LIMIT-$([ "$SCALE" = cpu ] && echo 2000 || echo "")}
OOD_ROOTS=()  # OOD_ROOT=DIR (an MNIST-layout folder, e.g. Fashion-MNIST) adds one set
[ -z "${OOD_ROOT:-}" ] || OOD_ROOTS=(--ood-root "$OOD_ROOT")

best() { icl report --workspace "$WS" --json --no-plot | python -c \
  "import json,sys; r={x['experiment']: x for x in json.load(sys.stdin)}['$1']; \
print(r['best_val_round'] if r['best_val_round'] is not None else r['rounds'])"; }

for seed in $SEEDS; do
  prefix="$MODE-n$SIZE-s$seed"
  if ! icl status --workspace "$WS" --json 2>/dev/null | grep -q "\"$prefix-icl\""; then
    paired "$prefix" "$seed" "$SIZE" "${MNIST_DATA[@]}"
  fi
  declare -A round=()
  for m in $METHODS; do
    name="$prefix-$m"
    round[$m]=$(best "$name")
    icl evaluate "${RUN[@]}" -e "$name" --round "${round[$m]}" --json > /dev/null
    icl ood "${RUN[@]}" -e "$name" --round "${round[$m]}" "${OOD_ROOTS[@]}" \
      ${OOD_LIMIT:+--limit "$OOD_LIMIT"} --json > /dev/null
    # Sample quality of every round's pseudo-negatives (a reference MLP, not the sampler).
    [ "$m" = baseline ] || icl quality "${RUN[@]}" -e "$name" --seed "$seed" --json > /dev/null
  done
  for m in $METHODS; do
    [ "$m" = baseline ] && continue
    for eps in $EPS_LIST; do
      icl attack "${RUN[@]}" -e "$prefix-$m" --round "${round[$m]}" \
        --against "$prefix-baseline:${round[baseline]}" --method pgd --eps "$eps" \
        --steps "$PGD_STEPS" --restarts "$PGD_RESTARTS" --seed "$seed" \
        ${PGD_LIMIT:+--limit "$PGD_LIMIT"} --json > /dev/null
    done
  done
  unset round
done
icl report --workspace "$WS" --json --no-plot > "$WS/report.json"
python "$(dirname "$0")/beyond_table.py" "$WS/report.json" --size "$SIZE" --mode "$MODE"
