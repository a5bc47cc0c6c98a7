#!/usr/bin/env bash
# The main job: baseline, ICL-noise and ICL side by side on the MNIST subset that ships with
# icl, paired (one shared C_0, training subset and real batch order), then a table and
# a PNG grid of pseudo-negatives. About 8 minutes on 2 CPU cores (see README).
#
#   bash recipes/quickstart.sh                # workspace ./icl-quickstart
#   WS=/tmp/demo ROUNDS=3 bash recipes/quickstart.sh
#
# C_0 trains with THREADS torch threads; then the methods run PARALLEL at a time (`icl run
# -e ... --parallel`, a live table on stderr), each process with RUN_THREADS threads (on 2
# cores, two 1-thread processes side by side get more done than one 2-thread process after
# another). ICL goes first: it is the longest (it also synthesises); the baseline then
# ICL-noise run beside it.
set -euo pipefail
WS=${WS:-icl-quickstart}
ROUNDS=${ROUNDS:-4}
THREADS=${THREADS:-2}
RUN_THREADS=${RUN_THREADS:-1}
PARALLEL=${PARALLEL:-2}
SEED=${SEED:-0}
TRAIN_SIZE=${TRAIN_SIZE:-2000}
INIT_EPOCHS=${INIT_EPOCHS:-8}
EPOCHS=${EPOCHS:-1}
REAL_EPOCHS=${REAL_EPOCHS:-1}
COUNT=${COUNT:-20}
MAX_STEPS=${MAX_STEPS:-200}
ARCH=${ARCH:-mnist-cnn}  # ARCH=tiny TRAIN_SIZE=200 ROUNDS=1 ...: a smoke run in seconds
VAL_SIZE=${VAL_SIZE:-1000}

# Round 0, trained once and shared: TRAIN_SIZE training images, 1,000 held out for
# validation (the round to report is chosen on it, never on the test set).
icl init --workspace "$WS" --threads "$THREADS" -e baseline --method baseline --seed "$SEED" \
  --dataset mnist-embedded --train-size "$TRAIN_SIZE" --val-size "$VAL_SIZE" --arch "$ARCH" \
  --mode softmax --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
  --batch-size 64 --lr 0.01 --pn-weight 1 --count "$COUNT" --max-steps "$MAX_STEPS" \
  --sampler-lr 0.01 --reference-std 0.3 --stop-rule logit

# ICL-noise and ICL start from the baseline's C_0 (--from baseline:0): paired.
for m in icl-noise icl; do
  icl init --workspace "$WS" --threads "$THREADS" -e "$m" --method "$m" --from baseline:0 \
    >/dev/null
done
icl run --workspace "$WS" -e icl -e baseline -e icl-noise --rounds "$ROUNDS" \
  --parallel "$PARALLEL" --threads "$RUN_THREADS"

icl report --workspace "$WS"
icl inspect --workspace "$WS" -e icl --round "$ROUNDS" | tail -n 1
