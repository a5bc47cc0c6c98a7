"""The stability table: one line per ICL run of a workspace, how it ended (the round a
training step diverged in, from the step log, or "finished"), its largest gradient norm
and |logit| over the rounds (the per-round diagnostics) and its val-selected test error.

    python recipes/stability_table.py WS EXPERIMENT [EXPERIMENT ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from icl_cli.steps.report import experiment_rows
from store import Store

SHOWN = ("lr", "pn_weight", "pn_weighting", "clip_grad", "weight_decay", "epochs")


def main() -> None:
    ws, names = Path(sys.argv[1]), sys.argv[2:]
    with Store.open(ws) as store:
        rows = {r.experiment: r for r in experiment_rows(store)}
        print("| run | settings | outcome | rounds | max grad norm | max real logit | "
              "max pool logit | test % (val-selected) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            r = rows.get(name)
            if r is None:
                print(f"| {name} | - | not run | - | - | - | - | - |")
                continue
            failed = [s for s in store.steps(name, "reclassify") if s.state == "failed"
                      and re.search(r"diverged", s.message or "")]
            outcome = f"diverged in round {failed[-1].round}" if failed else "finished"
            peak = {k: max((v.get(k) or 0.0 for v in r.diagnostics.values()), default=0.0)
                    for k in ("grad_norm_max", "real_logit_max", "pool_logit_max")}
            sel = r.test_error_best_val if r.test_error_best_val is not None \
                else r.test_error_last
            train = r.config["train"]
            settings = " ".join(f"{k}={train.get(k)}" for k in SHOWN)
            print(f"| {name} | {settings} | {outcome} | {r.rounds} | "
                  f"{peak['grad_norm_max']:.1f} | {peak['real_logit_max']:.1f} | "
                  f"{peak['pool_logit_max']:.1f} | "
                  f"{'-' if sel is None else f'{100 * sel:.2f}'} |")


if __name__ == "__main__":
    main()
