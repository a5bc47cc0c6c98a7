#!/usr/bin/env bash
# The main job: baseline, ICL-noise and ICL side by side on the MNIST subset that ships with
# icl, paired (one shared C_0, training subset and real batch order), then a table and
# a PNG grid of pseudo-negatives. About 5 minutes on 2 CPU cores.
#
#   bash recipes/quickstart.sh                # workspace ./icl-quickstart
#   WS=/tmp/demo ROUNDS=3 bash recipes/quickstart.sh
set -euo pipefail
WS=${WS:-icl-quickstart}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
COMMON=(--workspace "$WS" --threads "$THREADS")

# Round 0, trained once and shared: 2,000 training images, 1,000 held out for validation.
icl init "${COMMON[@]}" -e baseline --method baseline --seed "$SEED" \
  --dataset mnist-embedded --train-size 2000 --val-size 1000 --arch mnist-cnn --mode softmax \
  --init-epochs 10 --epochs 2 --real-epochs 1 --batch-size 64 --lr 0.01 --pn-weight 1 \
  --count 20 --max-steps 200 --sampler-lr 0.01 --reference-std 0.3 --stop-rule logit
icl init "${COMMON[@]}" -e icl-noise --method icl-noise --from baseline:0
icl init "${COMMON[@]}" -e icl --method icl --from baseline:0

for e in baseline icl-noise icl; do
  icl run "${COMMON[@]}" -e "$e" --rounds "$ROUNDS"
done

icl report --workspace "$WS"
icl inspect --workspace "$WS" -e icl --round "$ROUNDS" | tail -n 1
