#!/usr/bin/env bash
# A sweep of one ICL setting, judged on validation error. For every seed's paired group
# already in WS (made by figure5_train_size.sh or table1_mnist.sh), one more ICL experiment
# per value, started from that seed's C_0 (--from PREFIX-sSEED-baseline:0), so each stays
# paired with its baseline. Then the table, one line per value; pick the value with the
# lowest validation error, and report its test error (never pick on the test column).
#
#   WS=recipes-out/figure5_train_size-cpu PREFIX=softmax-n500 SEEDS="0 1 2 3 4" \
#     OPTION=--pn-weight VALUES="0.5 2" LANES=2 bash recipes/sweep.sh
#
# OPTION is any `icl init` option that --from does not share (--pn-weight, --count,
# --sampler-lr, --max-steps, --reference-std, --epochs, --real-epochs, --lr, ...).
# ROUNDS must match the group's other experiments (summarize --rounds ROUNDS compares them).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PREFIX=${PREFIX:?PREFIX=<name prefix of the paired groups, e.g. softmax-n500>}
OPTION=${OPTION:?OPTION=<an icl init option, e.g. --pn-weight>}
VALUES=${VALUES:?VALUES=<its values, e.g. \"0.5 2\">}

# one task per (seed, value): NAME SEED VALUE
tasks=()
for seed in $SEEDS; do
  for value in $VALUES; do
    tasks+=("$PREFIX-s$seed-icl${OPTION#-}-$value $seed $value")
  done
done

one() {  # NAME SEED VALUE
  _method "$1" icl "$LANE_THREADS" "$PREFIX-s$2-baseline" "$OPTION" "$3"
}
lane() {  # LANE_INDEX: every LANES-th task, from this index; a failed run does not stop it
  local i failed=0
  for ((i = $1; i < ${#tasks[@]}; i += LANES)); do
    # shellcheck disable=SC2086  # a task is three words
    one ${tasks[i]} || failed=1
  done
  return $failed
}
pids=()
for ((l = 0; l < LANES; l++)); do lane "$l" & pids+=($!); done
ok=0
for p in "${pids[@]}"; do wait "$p" || ok=1; done
# A setting that diverged on a seed is a finding, not a reason to lose the rest: the table
# compares the settings on the seeds where every run finished all ROUNDS rounds.
summarize --rounds "$ROUNDS" --val --per-seed
[ "$ok" = 0 ] || { echo "some runs failed (above); their seeds are left out of the table" >&2; exit 1; }
