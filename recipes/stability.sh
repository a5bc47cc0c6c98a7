#!/usr/bin/env bash
# Does ICL training stay finite? (issue 11, part 3.) From one C_0 (500 images, seed 2, the
# subset of data seed 0), ICL runs that once diverged, beside the same runs at today's
# defaults, and a stress case of our own; then one line per run: the round it diverged
# in (or "finished"), its largest gradient norm and |logit|, and its val-selected error.
#
#   SCALE=cpu MNIST_DIR=../shared/data/mnist LANES=2 bash recipes/stability.sh
#
# Runs (each `icl init --from stab-baseline:0` plus the options shown):
#   old-w2        --pn-weighting batch-mean --pn-weight 2  (diverged in round 4 before
#                 eq. 11 was fixed: RESULTS.md, "A sweep on validation")
#   new-w2        --pn-weight 2                             (per-sample, eq. 11)
#   new-w1        (the defaults)
#   lr5x          --lr 0.05                                 (5x the paper's rate)
#   lr5x-clip     --lr 0.05 --clip-grad $CLIP               (the lever, if it is needed)
# CASES picks a subset by name.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
CLIP=${CLIP:-10}
case "$SCALE" in
  smoke) SIZE=100; DATA_SEED=0; SEED=2 ;;
  *) SIZE=500; DATA_SEED=0; SEED=2; INIT_EPOCHS=${STAB_INIT_EPOCHS:-40}
     EPOCHS=${STAB_EPOCHS:-4}; REAL_EPOCHS=${STAB_REAL_EPOCHS:-2} ;;
esac
CASES=${CASES:-old-w2 new-w2 new-w1 lr5x lr5x-clip}
declare -A OPTS=(
  [old-w2]="--pn-weighting batch-mean --pn-weight 2" [new-w2]="--pn-weight 2" [new-w1]=""
  [lr5x]="--lr 0.05" [lr5x-clip]="--lr 0.05 --clip-grad $CLIP")
mkdir -p "$WS"
icl init "${RUN[@]}" -e stab-baseline --method baseline --seed "$SEED" --data-seed "$DATA_SEED" \
  "${MNIST_DATA[@]}" --train-size "$SIZE" --val-size "$VAL" --arch "$ARCH" \
  --init-epochs "$INIT_EPOCHS" --epochs "$EPOCHS" --real-epochs "$REAL_EPOCHS" \
  --count "$COUNT" --max-steps "$MAX_STEPS" >/dev/null || exit 1
one() {  # CASE: its run, logged to $WS/stab-CASE.log; a divergence is a result, not a failure
  # shellcheck disable=SC2086  # OPTS holds several words
  { icl init "${RUN[@]}" -e "stab-$1" --method icl --from stab-baseline:0 ${OPTS[$1]} &&
    icl run "${RUN[@]}" -e "stab-$1" --rounds "$ROUNDS"; } > "$WS/stab-$1.log" 2>&1 || true
}
cases=($CASES)
lane() { local i; for ((i = $1; i < ${#cases[@]}; i += LANES)); do one "${cases[i]}"; done; }
pids=()
for ((l = 0; l < LANES; l++)); do lane "$l" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
icl report --workspace "$WS" --json --no-plot > "$WS/report.json"
python - "$WS" "${cases[@]}" <<'PY'
import json, re, sys
from pathlib import Path
ws, cases = Path(sys.argv[1]), sys.argv[2:]
rows = {r["experiment"]: r for r in json.load(open(ws / "report.json"))}
print("| run | options | outcome | rounds | max grad norm | max real logit | max pool logit "
      "| test % (val-selected) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for case in cases:
    r = rows.get(f"stab-{case}")
    log = (ws / f"stab-{case}.log").read_text() if (ws / f"stab-{case}.log").exists() else ""
    m = re.search(r"training round (\d+) of .* diverged", log)
    outcome = f"diverged in round {m.group(1)}" if m else ("finished" if r else "failed")
    d = r["diagnostics"] if r else {}
    peak = lambda k: max((v.get(k) or 0 for v in d.values()), default=0)  # noqa: E731
    sel = r and (r["test_error_best_val"] if r["test_error_best_val"] is not None
                 else r["test_error_last"])
    opts = " ".join(f"{k}={v}" for k, v in sorted(r["config"]["train"].items())
                    if k in ("lr", "pn_weight", "pn_weighting", "clip_grad")) if r else "-"
    print(f"| {case} | {opts} | {outcome} | {r['rounds'] if r else '-'} | "
          f"{peak('grad_norm_max'):.1f} | {peak('real_logit_max'):.1f} | "
          f"{peak('pool_logit_max'):.1f} | {100 * sel:.2f} |" if r else
          f"| {case} | - | {outcome} | - | - | - | - | - |")
PY
