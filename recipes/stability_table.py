"""The stability tables of a workspace.

One line per ICL run: how it ended (the round a training step diverged in, from the step
log, or "finished"), its largest gradient norm and |logit| over the rounds (the per-round
diagnostics) and its val-selected test error:

    python recipes/stability_table.py WS EXPERIMENT [EXPERIMENT ...]

The recovery table (``recipes/stability.sh`` with ``RECOVER=N``): per case and seed, the
run without and with ``icl run --recover N`` (``stab-sS-CASE`` and ``stab-sS-CASE-rN``),
how it ended (diverged in round t, recovered rounds, finished), its validation and test
error at the round chosen on validation, and the paired difference to the baseline of the
same C_0 (``stab-sS-baseline``); then per case how many diverged and recovered, the mean
differences, and the divergence rate ``icl report --json`` gives its configuration:

    python recipes/stability_table.py --recovery WS [--rounds N]

A run that has not reached N rounds (default: the most any run of the workspace has) and
did not diverge is "running" or "stopped" at the round it reached, and is left out of the
per-case counts and means until it ends (the counts say how many were left out).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from icl_cli.steps.report import experiment_rows
from store import Store

SHOWN = ("lr", "pn_weight", "pn_weighting", "clip_grad", "weight_decay", "epochs")
NAME = re.compile(r"stab-s(\d+)-(.+?)(?:-r(\d+))?")


def main() -> None:
    if sys.argv[1:2] == ["--recovery"]:
        target = int(sys.argv[4]) if sys.argv[3:4] == ["--rounds"] else None
        return recovery_table(Path(sys.argv[2]), target)
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
            outcome = f"diverged in round {r.diverged}" if r.diverged is not None \
                else "finished"
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


def ended(r, target: int) -> bool:
    """Whether a run is over: it diverged, or it reached its ``target`` rounds."""
    return r.diverged is not None or (r.rounds >= target and not r.running)


def outcome(r, target: int) -> str:
    """How a run ended: diverged (unrecovered), recovered rounds, or finished; or, before
    it ends, the round it reached and whether a step of it is running now."""
    if r.diverged is not None:
        return f"diverged in round {r.diverged}"
    if not ended(r, target):
        return f"{'running' if r.running else 'stopped'} at round {r.rounds} of {target}"
    kept = {t: v for t, v in sorted(r.recovery.items()) if v["recovered"]}
    if kept:
        return "recovered round " + ", ".join(f"{t} ({v['attempts']} attempts)"
                                              for t, v in kept.items())
    return "finished" if r.rounds > 0 else f"round {r.rounds}"


def chosen(r) -> tuple[float | None, float | None]:
    """(val %, test %) at the round with the lowest validation error."""
    if r.best_val_round is None:
        return None, None
    e = r.errors[r.best_val_round]
    return 100 * e["val"], 100 * e["test"]


def _cell(x: float | None, base: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if base is None else f"{x:.2f} ({x - base:+.2f})"


def _mean(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:+.2f}"
    return f"{statistics.mean(xs):+.2f} +- {statistics.stdev(xs):.2f}"


def recovery_table(ws: Path, target: int | None = None) -> None:
    with Store.open(ws) as store:
        rows = experiment_rows(store)
    target = target or max((r.rounds for r in rows), default=0)
    runs: dict[tuple[str, int], dict[str, object]] = {}
    bases = {}
    for r in rows:
        m = NAME.fullmatch(r.experiment)
        if m is None:
            continue
        seed, case, n = int(m[1]), m[2], m[3]
        if case == "baseline":
            bases[seed] = r
        else:
            runs.setdefault((case, seed), {})["with" if n else "without"] = r
    n = max((r.recover or 0 for r in rows), default=0)
    print(f"| case | seed | baseline val % / test % | without --recover: outcome | val % "
          f"(vs baseline) | test % (vs baseline) | with --recover {n}: outcome | val % "
          f"(vs baseline) | test % (vs baseline) |")
    print("|" + " --- |" * 9)
    summary: dict[str, dict[str, list]] = {}
    order = list(dict.fromkeys(case for case, _ in runs))  # cases as the report lists them
    for (case, seed), pair in sorted(runs.items(), key=lambda kv: (order.index(kv[0][0]),
                                                                     kv[0][1])):
        base = bases.get(seed)
        bv, bt = chosen(base) if base is not None else (None, None)
        cells = [case, str(seed), f"{_cell(bv, None)} / {_cell(bt, None)}"]
        s = summary.setdefault(case, {})
        for kind in ("without", "with"):
            r = pair.get(kind)
            if r is None:
                cells += ["not run", "-", "-"]
                continue
            v, t = chosen(r)
            cells += [outcome(r, target), _cell(v, bv), _cell(t, bt)]
            if not ended(r, target):
                s.setdefault(f"{kind} unfinished", []).append(r)
                continue
            s.setdefault(f"{kind} runs", []).append(r)
            if v is not None and bv is not None:
                s.setdefault(f"{kind} dval", []).append(v - bv)
                s.setdefault(f"{kind} dtest", []).append(t - bt)
        print("| " + " | ".join(cells) + " |")
    print()
    print(f"| case | seeds | without --recover: diverged | its divergence_rate | with "
          f"--recover {n}: diverged | recovered | its divergence_rate | val % vs baseline, "
          f"without | val % vs baseline, with | test % vs baseline, without | test % vs "
          f"baseline, with | unfinished, left out |")
    print("|" + " --- |" * 12)
    for case, s in summary.items():
        wo, wi = s.get("without runs", []), s.get("with runs", [])
        rate = [f"{r[0].divergence_rate:.2f}" if r else "-" for r in (wo, wi)]
        print(f"| {case} | {max(len(wo), len(wi))} | "
              f"{sum(r.diverged is not None for r in wo)} / {len(wo)} | {rate[0]} | "
              f"{sum(r.diverged is not None for r in wi)} / {len(wi)} | "
              f"{sum(any(v['recovered'] for v in r.recovery.values()) for r in wi)} / "
              f"{len(wi)} | {rate[1]} | {_mean(s.get('without dval', []))} | "
              f"{_mean(s.get('with dval', []))} | {_mean(s.get('without dtest', []))} | "
              f"{_mean(s.get('with dtest', []))} | "
              f"{len(s.get('without unfinished', [])) + len(s.get('with unfinished', []))} |")


if __name__ == "__main__":
    main()
