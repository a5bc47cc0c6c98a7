"""``icl status`` and ``icl report``: what the catalog knows, across experiments."""

from __future__ import annotations

from dataclasses import dataclass

from icl_cli.steps.run import errors_by_round


@dataclass(frozen=True)
class ExperimentRow:
    experiment: str
    method: str
    mode: str
    dataset: str
    train_size: int | None
    seed: int
    parent: str | None
    rounds: int  # last round with a checkpoint
    shards: int
    test_error_0: float | None
    test_error_last: float | None
    best_val_round: int | None  # chosen on validation error, never on test
    test_error_best_val: float | None
    running: list[str]
    errors: dict[int, dict[str, float]]  # {round: {"test": e, "val": e}}
    # Two-way FGSM records made with `icl attack -e this`: round, against, against_round,
    # eps, and [correct, fool the maker, of those fool the other] for examples made on
    # this model ("made_here") and on the other one ("made_there").
    attacks: list[dict]
    config: dict  # the experiment's recorded settings (what a sweep varies)
    data_fingerprint: str | None  # which images it trains and validates on (None: old)
    # Per round: what its steps measured besides the error (grad_norm_max, real_logit_max,
    # pool_logit_max from reclassify; outside_range, never_passed from synthesize).
    diagnostics: dict[int, dict[str, float | None]]


def experiment_rows(store) -> list[ExperimentRow]:
    rows = []
    running = {}
    for s in store.steps():
        if s.state == "running":
            running.setdefault(s.experiment, []).append(f"{s.name} --round {s.round}")
    for exp in store.experiments():
        cfg = exp.config
        errs = errors_by_round(store, exp.name)
        ckpts = [c.round for c in store.checkpoints(exp.name)]
        last = max(ckpts, default=-1)
        with_val = [r for r in errs if "val" in errs[r] and "test" in errs[r]]
        best = min(with_val, key=lambda r: (errs[r]["val"], r)) if with_val else None
        rows.append(ExperimentRow(
            exp.name, cfg["method"], cfg["model"]["mode"], cfg["data"]["dataset"],
            cfg["data"]["train_size"], cfg["seed"], exp.parent, last,
            len(store.shards(exp.name, active_only=True)),
            errs.get(0, {}).get("test"), errs.get(last, {}).get("test"), best,
            errs[best]["test"] if best is not None else None, running.get(exp.name, []),
            errs, [dict(round=a.round, against=a.against_experiment,
                        against_round=a.against_round, eps=a.eps,
                        made_here=a.counts["a_made"], made_there=a.counts["b_made"])
                   for a in store.attacks(exp.name)], cfg, exp.data_fingerprint,
            store.metrics(exp.name)))
    return sorted(rows, key=_paired_order(rows))


METHOD_ORDER = {"baseline": 0, "icl-noise": 1, "icl": 2}


def _paired_order(rows: list[ExperimentRow]):
    """Sort key: each baseline followed by the experiments started from it (``--from``),
    baseline, ICL-noise, ICL; otherwise in creation order."""
    created = {r.experiment: i for i, r in enumerate(rows)}
    parent = {r.experiment: r.parent for r in rows}

    def root(name: str) -> str:
        seen = set()
        while parent.get(name) in created and name not in seen:
            seen.add(name)
            name = parent[name]
        return name

    return lambda r: (created[root(r.experiment)], METHOD_ORDER.get(r.method, 9),
                      created[r.experiment])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(rows: list[ExperimentRow]) -> str:
    """A markdown table across experiments; errors in %."""
    head = ("| experiment | method | mode | train size | rounds | round-0 test % | "
            "last test % | best-val round | its test % |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(f"| {r.experiment} | {r.method} | {r.mode} | {r.train_size or 'all'} | "
                     f"{r.rounds} | {_pct(r.test_error_0)} | {_pct(r.test_error_last)} | "
                     f"{'-' if r.best_val_round is None else r.best_val_round} | "
                     f"{_pct(r.test_error_best_val)} |")
    return "\n".join(lines)
