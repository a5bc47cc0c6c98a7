"""``icl status`` and ``icl report``: what the catalog knows, across experiments, and the
error-against-round plot. Reads the catalog only: no torch, no MLflow at import (the
read-only commands stay fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def errors_by_round(store, name: str) -> dict[int, dict[str, float]]:
    """{round: {"test": error, "val": error}} from the catalog, counting only evaluations
    made after the round's current checkpoint (a ``--force`` retrain makes older ones
    stale, and ``icl run`` then evaluates the round again)."""
    trained = {c.round: c.created_at for c in store.checkpoints(name)}
    out: dict[int, dict[str, float]] = {}
    for e in store.evaluations(name):
        if e.round in trained and e.created_at >= trained[e.round]:
            out.setdefault(e.round, {})[e.split] = e.error
    return out


def plot_errors(store, names: list[str], filename: str = "error-vs-round.png") -> Path:
    """Test error (%) against round for each experiment (the paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name in names:
        errs = errors_by_round(store, name)
        rs = sorted(r for r in errs if "test" in errs[r])
        ax.plot(rs, [100 * errs[r]["test"] for r in rs], marker="o", label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round t")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    # Beside the axes, in columns of 12: a workspace may hold dozens of experiments.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
              ncol=1 + (len(names) - 1) // 12)
    path = store.figure_path(names[0], filename)
    store.write_figure(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


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
    stale: dict[int, str]  # rounds that no longer follow from the round before, and why


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
            store.metrics(exp.name), store.stale_rounds(exp.name)))
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
