#!/usr/bin/env bash
# The main job: for each of SEEDS, a baseline, ICL-noise and ICL side by side on 500 images
# of the MNIST subset that ships with icl, paired (one shared C_0, training subset and real
# batch order per seed); then each method's test error, ICL's paired difference from its
# baseline seed by seed (mean +- std, the seeds it wins on) and a PNG grid of the last
# round's pseudo-negatives. About 10 minutes on 2 CPU cores (README says what to expect).
#
#   bash recipes/quickstart.sh                # workspace ./icl-quickstart
#   WS=/tmp/demo SEEDS="0 1" bash recipes/quickstart.sh
#   ARCH=tiny TRAIN_SIZE=100 VAL_SIZE=50 INIT_EPOCHS=1 ROUNDS=1 SEEDS="0 1" ... : seconds
#
# 500 images is where ICL's gain shows (RESULTS.md, "Figure 5 at 500 images": -1.19 +-
# 0.53 points over 5 seeds at 5 rounds); to fit 10 minutes this job trains C_0 30 epochs
# (not 40), 4 rounds (not 5) of 4 mixed epochs and 1 real-only epoch (not 2). Every process has RUN_THREADS torch threads and
# PARALLEL of them run at once (on 2 cores two 1-thread processes get more done than one
# 2-thread process): first the seeds' C_0, then every experiment's rounds, ICL first.
# MLflow logging is off here, to keep the job short (`icl run` logs by default).
set -euo pipefail
WS=${WS:-icl-quickstart}
SEEDS=${SEEDS:-0 1 2}
ROUNDS=${ROUNDS:-4}
RUN_THREADS=${RUN_THREADS:-1}
PARALLEL=${PARALLEL:-2}
TRAIN_SIZE=${TRAIN_SIZE:-500}
VAL_SIZE=${VAL_SIZE:-1000}
INIT_EPOCHS=${INIT_EPOCHS:-30}
EPOCHS=${EPOCHS:-4}
REAL_EPOCHS=${REAL_EPOCHS:-1}
COUNT=${COUNT:-20}
MAX_STEPS=${MAX_STEPS:-200}
ARCH=${ARCH:-mnist-cnn}
cd "$(dirname "$0")/.." && HERE=$PWD && cd - > /dev/null

# Round 0 of each seed (its own 500 training and 1,000 validation images; the round to
# report is chosen on validation, never on the test set), the seeds side by side.
c0() {
  icl init --workspace "$WS" --threads "$RUN_THREADS" -e "s$1-baseline" --method baseline \
    --seed "$1" --dataset mnist-embedded --train-size "$TRAIN_SIZE" --val-size "$VAL_SIZE" \
    --arch "$ARCH" --mode softmax --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" \
    --real-epochs "$REAL_EPOCHS" --batch-size 64 --lr 0.01 --pn-weight 1 --count "$COUNT" \
    --max-steps "$MAX_STEPS" --sampler-lr 0.01 --reference-std 0.3 --stop-rule logit \
    --no-mlflow > "$WS.s$1-c0.log" 2>&1 || { cat "$WS.s$1-c0.log" >&2; return 1; }
  rm -f "$WS.s$1-c0.log"
}
echo "training C_0 for seeds $SEEDS ..." >&2
pids=() seeds=($SEEDS)
for s in "${seeds[@]}"; do c0 "$s" & pids+=($!); done  # all at once: no core waits
for p in "${pids[@]}"; do wait "$p"; done

# ICL-noise and ICL start from their seed's C_0 (--from s<seed>-baseline:0): paired.
runs=()
for s in $SEEDS; do
  for m in icl-noise icl; do
    icl init --workspace "$WS" -e "s$s-$m" --method "$m" --from "s$s-baseline:0" \
      --no-mlflow > /dev/null
  done
  runs=(-e "s$s-icl" "${runs[@]}" -e "s$s-baseline" -e "s$s-icl-noise")
done
echo "running $ROUNDS rounds of $(( ${#runs[@]} / 2 )) experiments, $PARALLEL at a time (each" \
  "one's rounds: $WS/run.log) ..." >&2
icl run --workspace "$WS" "${runs[@]}" --rounds "$ROUNDS" --parallel "$PARALLEL" \
  --threads "$RUN_THREADS" --no-mlflow > "$WS/run.log"

icl report --workspace "$WS" --json --no-plot > "$WS/report.json"
echo
echo "Test error (%) of each method at its best validation round, and ICL's paired"
echo "difference from the baseline trained from the same C_0 (negative: ICL is better):"
python "$HERE/recipes/summarize.py" "$WS/report.json" --val --per-seed
first=${seeds[0]}
icl inspect --workspace "$WS" -e "s$first-icl" --round "$ROUNDS" | tail -n 1
