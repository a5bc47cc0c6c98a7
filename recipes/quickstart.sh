#!/usr/bin/env bash
# The main job: baseline, ICL-noise and ICL side by side on the MNIST subset that ships with
# icl, paired (one shared C_0, training subset and real batch order), then a table and
# a PNG grid of pseudo-negatives. About 8 minutes on 2 CPU cores (see README).
#
#   bash recipes/quickstart.sh                # workspace ./icl-quickstart
#   WS=/tmp/demo ROUNDS=3 bash recipes/quickstart.sh
#
# C_0 trains with THREADS torch threads; then the three methods run at the same time, one
# process each with RUN_THREADS threads (on 2 cores, three 1-thread processes get more work
# done than one 2-thread process after another). Each method's log: $WS/<method>.log.
set -euo pipefail
WS=${WS:-icl-quickstart}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
RUN_THREADS=${RUN_THREADS:-1}
SEED=${SEED:-0}
TRAIN_SIZE=${TRAIN_SIZE:-2000}
INIT_EPOCHS=${INIT_EPOCHS:-8}
EPOCHS=${EPOCHS:-1}
REAL_EPOCHS=${REAL_EPOCHS:-1}
COUNT=${COUNT:-20}
METHODS=(baseline icl-noise icl)

# Round 0, trained once and shared: TRAIN_SIZE training images, 1,000 held out for
# validation (the round to report is chosen on it, never on the test set).
icl init --workspace "$WS" --threads "$THREADS" -e baseline --method baseline --seed "$SEED" \
  --dataset mnist-embedded --train-size "$TRAIN_SIZE" --val-size 1000 --arch mnist-cnn \
  --mode softmax --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
  --batch-size 64 --lr 0.01 --pn-weight 1 --count "$COUNT" --max-steps 200 \
  --sampler-lr 0.01 --reference-std 0.3 --stop-rule logit
icl init --workspace "$WS" -e icl-noise --method icl-noise --from baseline:0 >/dev/null
icl init --workspace "$WS" -e icl --method icl --from baseline:0 >/dev/null

echo "running ${METHODS[*]} for $ROUNDS rounds side by side (logs: $WS/<method>.log)" >&2
pids=()
for e in "${METHODS[@]}"; do
  icl run --workspace "$WS" --threads "$RUN_THREADS" -e "$e" --rounds "$ROUNDS" \
    > "$WS/$e.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { failed=1; echo "icl run -e ${METHODS[$i]} failed:" >&2;
                          tail -n 3 "$WS/${METHODS[$i]}.log" >&2; }
done
[ "$failed" = 0 ] || exit 1
for e in "${METHODS[@]}"; do cat "$WS/$e.log"; done

icl report --workspace "$WS"
icl inspect --workspace "$WS" -e icl --round "$ROUNDS" | tail -n 1
