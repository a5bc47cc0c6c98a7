#!/usr/bin/env bash
# The main job: baseline, ICL-noise and ICL side by side on the MNIST subset that ships with
# icl, paired (one shared C_0, training subset and real batch order), then a table and
# a PNG grid of pseudo-negatives. About 8 minutes on 2 CPU cores (see README).
#
#   bash recipes/quickstart.sh                # workspace ./icl-quickstart
#   WS=/tmp/demo ROUNDS=3 bash recipes/quickstart.sh
#
# C_0 trains with THREADS torch threads; then the methods run in two lanes at once, each
# process with RUN_THREADS threads (on 2 cores, two 1-thread processes side by side get
# more done than one 2-thread process after another).
set -euo pipefail
WS=${WS:-icl-quickstart}
ROUNDS=${ROUNDS:-4}
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

# Two lanes, one per core: the baseline then ICL-noise, and ICL (about as much work: it
# also synthesises). ICL-noise and ICL start from the baseline's C_0 (--from baseline:0).
# Each method's log: $WS/<method>.log.
echo "running baseline, then icl-noise, beside icl: $ROUNDS rounds each (logs: $WS/*.log)" >&2
source "$(dirname "$0")/lib.sh"  # _method NAME METHOD THREADS BASELINE: init --from, run, log
(_method baseline baseline "$RUN_THREADS" baseline &&
  _method icl-noise icl-noise "$RUN_THREADS" baseline) & lane=$!
_method icl icl "$RUN_THREADS" baseline || { wait "$lane"; exit 1; }
wait "$lane" || exit 1
for e in "${METHODS[@]}"; do cat "$WS/$e.log"; done

icl report --workspace "$WS"
icl inspect --workspace "$WS" -e icl --round "$ROUNDS" | tail -n 1
