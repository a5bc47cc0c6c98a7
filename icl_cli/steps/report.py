"""``icl status`` and ``icl report``: what the catalog knows, across experiments, and the
error-against-round plot. Reads the catalog only: no torch, no MLflow at import (the
read-only commands stay fast)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store import Store

DIVERGED = "diverged ("
"""What the step log's message of a diverged training step holds (``is_divergence``;
``steps.reclassify.TrainingDiverged`` writes it)."""


def is_divergence(message: str | None) -> bool:
    """Whether a failed step's logged message is a diverged training.

    Example:
        >>> is_divergence("training round 2 of 'icl' diverged (the training loss was nan "
        ...               "in epoch 3); nothing was saved")
        True
    """
    return bool(message) and f" {DIVERGED}" in message


def errors_by_round(store: Store, name: str) -> dict[int, dict[str, float]]:
    """{round: {"test": error, "val": error}} from the catalog, counting only evaluations
    made after the round's current checkpoint (a ``--force`` retrain makes older ones
    stale, and ``icl run`` then evaluates the round again)."""
    trained = {c.round: c.created_at for c in store.checkpoints(name)}
    out: dict[int, dict[str, float]] = {}
    for e in store.evaluations(name):
        if e.round in trained and e.created_at >= trained[e.round]:
            out.setdefault(e.round, {})[e.split] = e.error
    return out


def plot_errors(store: Store, names: list[str], filename: str = "error-vs-round.png",
                path: Path | None = None) -> Path:
    """Test error (%) against round for each experiment (the paper's Figure 4), written
    to ``path`` (default: ``filename`` among the first experiment's figures)."""
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
    path = store.figure_path(names[0], filename) if path is None else path
    store.write_figure(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(store: Store, fig, name: str, filename: str) -> Path:
    path = store.figure_path(name, filename)
    store.write_figure(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    return path


def plot_reliability(store: Store, name: str, round_: int, curves: dict) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, one line per split
    (``curves``: {split: metrics.Calibration}), the diagonal being perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for split, cal in curves.items():
        used = [i for i, c in enumerate(cal.count) if c > 0]
        ax.plot([cal.confidence[i] for i in used], [cal.accuracy[i] for i in used],
                marker="o", ms=3, label=f"{split}: ECE {100 * cal.ece:.2f} %")
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}, round {round_}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    path = _save(store, fig, name, f"reliability-round-{round_:04d}.png")
    plt.close(fig)
    return path


def plot_histograms(store: Store, name: str, round_: int, scores_in: dict, scores_out: dict,
                    filename: str) -> Path:
    """Histograms of in- vs out-of-distribution scores: one panel per score, the test
    set against each out-of-distribution set (``scores_out``: {set: {score: values}})."""
    plt = _pyplot()
    names = list(scores_in)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), dpi=110,
                             squeeze=False)
    for ax, score in zip(axes[0], names, strict=True):
        ax.hist(scores_in[score], bins=40, density=True, alpha=0.6, label="test (in)")
        for set_name, values in scores_out.items():
            ax.hist(values[score], bins=40, density=True, histtype="step", label=set_name)
        ax.set_title(score, fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{name}, round {round_}", fontsize=9, y=1.03)
    path = _save(store, fig, name, filename)
    plt.close(fig)
    return path


def plot_quality(store: Store, name: str, rounds: list, real_frechet: float) -> Path:
    """Sample quality against the round: the reference's target share and confidence
    (left), the classifier-feature Frechet distance with real data's own (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 2.8), dpi=110)
    t = [r.round for r in rounds]
    left.plot(t, [r.target_share for r in rounds], marker="o", label="assigned to target")
    left.plot(t, [r.confidence for r in rounds], marker="s", label="mean confidence")
    left.set_ylim(0, 1)
    left.legend(fontsize=7)
    right.plot(t, [r.frechet for r in rounds], marker="o", label="pseudo-negatives")
    right.axhline(real_frechet, color="grey", ls="--", lw=0.8, label="real train vs test")
    right.set_ylabel("classifier-feature Frechet distance", fontsize=7)
    right.legend(fontsize=7)
    import matplotlib.ticker

    for ax in (left, right):
        ax.set_xlabel("round t")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(name, fontsize=9)
    path = _save(store, fig, name, "quality-vs-round.png")
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
    # Two-way attack records made with `icl attack -e this`: round, against,
    # against_round, eps, method (fgsm, pgd), params, n (test images), and [correct, fool
    # the maker, of those fool the other] for examples made on this model ("made_here")
    # and on the other one ("made_there").
    attacks: list[dict]
    config: dict  # the experiment's recorded settings (what a sweep varies)
    data_fingerprint: str | None  # which images it trains and validates on (None: old)
    # Per round: what its steps measured besides the error (grad_norm_max, real_logit_max,
    # pool_logit_max from reclassify; outside_range, never_passed from synthesize;
    # test_nll, test_ece, val_... from evaluate; ood_<set>_<score>_<auroc|aupr|fpr95>).
    diagnostics: dict[int, dict[str, float | None]]
    stale: dict[int, str]  # rounds that no longer follow from the round before, and why
    # ``icl run --recover N``: N as its rounds were trained with (None: never asked for).
    recover: int | None = None
    # Per round whose training diverged: {"recovered": True, "attempts": k, "lr": ...,
    # "clip_grad": ...} (trained again by --recover: k attempts, the last kept, with those
    # settings) or {"recovered": False, "attempts": k} (k diverged attempts, no checkpoint).
    recovery: dict[int, dict] = field(default_factory=dict)
    diverged: int | None = None  # the round whose training diverged, unrecovered (None: none)
    # The runs of this row's configuration (its settings but the seeds and data folder,
    # and its --recover) in the workspace: {"id": ..., "runs": n, "diverged": d,
    # "recovered": r}; ``divergence_rate`` is d / n.
    configuration: dict = field(default_factory=dict)
    divergence_rate: float | None = None


def training_outcome(steps: list, trained: set[int]
                     ) -> tuple[int | None, dict[int, dict], int | None]:
    """(recover, recovery, diverged) of an experiment from its ``reclassify`` steps (oldest
    first) and the rounds that have a checkpoint (see ``ExperimentRow``)."""
    recover, recovery, diverged = None, {}, None
    by_round: dict[int, list] = {}
    for s in steps:
        by_round.setdefault(s.round, []).append(s)
        asked = (s.config or {}).get("recovery", {}).get("recover")
        if asked is not None:
            recover = max(recover or 0, int(asked))
    for t, ss in sorted(by_round.items()):
        ok = [s for s in ss if s.state == "ok"]
        if t in trained and ok:
            record = (ok[-1].config or {}).get("recovery") or {}
            if record.get("attempt"):
                train = (ok[-1].config or {}).get("train") or {}
                recovery[t] = {"recovered": True, "attempts": int(record["attempt"]) + 1,
                               "lr": train.get("lr"), "clip_grad": train.get("clip_grad")}
        elif t not in trained and ss[-1].state == "failed" and is_divergence(ss[-1].message):
            tried = 0
            for s in reversed(ss):
                if s.state != "failed" or not is_divergence(s.message):
                    break
                tried += 1
            recovery[t] = {"recovered": False, "attempts": tried}
            diverged = t if diverged is None else min(diverged, t)
    return recover, recovery, diverged


NOT_A_SETTING = ("seed", "data.seed", "data.root", "data.download")
"""What differs between the seeds of one configuration, not between configurations (as
recipes/summarize.py reads them)."""


def configuration_id(config: dict, recover: int | None) -> str:
    """The id of a run's configuration: its settings but ``NOT_A_SETTING``, and its
    ``--recover`` (12 hex digits).

    Example:
        >>> a = configuration_id({"seed": 1, "train": {"lr": 0.05}}, None)
        >>> a == configuration_id({"seed": 2, "train": {"lr": 0.05}}, None)
        True
    """
    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    kept = {k: v for k, v in flat(config).items() if k not in NOT_A_SETTING}
    blob = json.dumps({"settings": kept, "recover": recover}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def experiment_rows(store: Store) -> list[ExperimentRow]:
    rows = []
    running = {}
    for s in store.steps(state="running"):  # only those rows, not the whole step log
        running.setdefault(s.experiment, []).append(f"{s.name} --round {s.round}")
    trainings: dict[str, list] = {}
    for s in store.steps(name="reclassify"):  # every experiment's, in one read
        trainings.setdefault(s.experiment, []).append(s)
    from icl_cli.config import ExperimentConfig

    for exp in store.experiments():
        cfg = exp.config
        # What the steps would run it with: defaults for what a config lacks (one that
        # icl did not write, or an older icl's).
        c = ExperimentConfig.from_dict(cfg)
        errs = errors_by_round(store, exp.name)
        ckpts = [c.round for c in store.checkpoints(exp.name)]
        last = max(ckpts, default=-1)
        with_val = [r for r in errs if "val" in errs[r] and "test" in errs[r]]
        best = min(with_val, key=lambda r: (errs[r]["val"], r)) if with_val else None
        recover, recovery, diverged = training_outcome(trainings.get(exp.name, []),
                                                       set(ckpts))
        rows.append(ExperimentRow(
            exp.name, c.method, c.model.mode, c.data.dataset, c.data.train_size, c.seed,
            exp.parent, last,
            len(store.shards(exp.name, active_only=True)),
            errs.get(0, {}).get("test"), errs.get(last, {}).get("test"), best,
            errs[best]["test"] if best is not None else None, running.get(exp.name, []),
            errs, [dict(round=a.round, against=a.against_experiment,
                        against_round=a.against_round, eps=a.eps,
                        made_here=a.counts["a_made"], made_there=a.counts["b_made"],
                        method=a.method, params=a.params, n=a.counts.get("n"))
                   for a in store.attacks(exp.name)], cfg, exp.data_fingerprint,
            store.metrics(exp.name), store.stale_rounds(exp.name), recover, recovery,
            diverged))
    return sorted(_with_divergence_rates(rows), key=_paired_order(rows))


def _with_divergence_rates(rows: list[ExperimentRow]) -> list[ExperimentRow]:
    """Each row with its configuration's runs, and how many diverged or recovered."""
    from dataclasses import replace

    ids = [configuration_id(r.config, r.recover) for r in rows]
    out = []
    for r, cid in zip(rows, ids, strict=True):
        same = [x for x, c in zip(rows, ids, strict=True) if c == cid]
        diverged = sum(x.diverged is not None for x in same)
        recovered = sum(any(v["recovered"] for v in x.recovery.values()) for x in same)
        out.append(replace(r, configuration={"id": cid, "runs": len(same),
                                             "diverged": diverged, "recovered": recovered},
                           divergence_rate=diverged / len(same)))
    return out


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
    return "\n".join(lines + _stability_table(rows) + _calibration_table(rows)
                     + _ood_table(rows) + _attack_table(rows))


def _stability_table(rows: list[ExperimentRow]) -> list[str]:
    """The runs whose training diverged, recovered (``icl run --recover``) or not: a
    recovered round trained with other settings than its experiment's, which a paired
    comparison must know."""
    out = []
    for r in rows:
        if not r.recovery and r.recover is None:
            continue
        kept = "; ".join(
            f"{t} ({v['attempts']} attempts: lr={v['lr']:g}"
            + (f", clip_grad={v['clip_grad']:g}" if v.get("clip_grad") else "") + ")"
            for t, v in sorted(r.recovery.items()) if v["recovered"]) or "-"
        c = r.configuration
        out.append(f"| {r.experiment} | {'-' if r.recover is None else r.recover} | {kept} | "
                   f"{'-' if r.diverged is None else r.diverged} | "
                   f"{c.get('diverged', 0)} / {c.get('runs', 1)} |")
    head = ["", "| experiment | --recover | recovered rounds | diverged in round | "
            "its configuration: diverged / runs |", "|" + " --- |" * 5]
    return head + out if out else []


def _latest(r: ExperimentRow, key: str) -> int | None:
    """The last round whose recorded metrics hold ``key``."""
    have = [int(t) for t, m in r.diagnostics.items() if m.get(key) is not None]
    return max(have, default=None)


def _calibration_table(rows: list[ExperimentRow]) -> list[str]:
    """NLL and ECE (``icl evaluate``) at each experiment's last evaluated round."""
    out = []
    for r in rows:
        t = _latest(r, "test_ece")
        if t is None:
            continue
        m = r.diagnostics[t]
        out.append(f"| {r.experiment} | {t} | {m['test_nll']:.4f} | {_pct(m['test_ece'])} | "
                   f"{'-' if m.get('val_nll') is None else format(m['val_nll'], '.4f')} | "
                   f"{_pct(m.get('val_ece'))} |")
    head = ["", "| experiment | round | test NLL | test ECE % | val NLL | val ECE % |",
            "|" + " --- |" * 6]
    return head + out if out else []


OOD_SCORES = ("max_softmax", "max_logit", "logsumexp")  # metrics.SCORES, without torch


def _ood_table(rows: list[ExperimentRow]) -> list[str]:
    """AUROC (%) per out-of-distribution set and score (``icl ood``), last round run."""
    out = []
    for r in rows:
        t = max((int(k) for k, m in r.diagnostics.items()
                 if any(n.startswith("ood_") for n in m)), default=None)
        if t is None:
            continue
        m = r.diagnostics[t]
        sets = sorted({n[4:-len("_max_softmax_auroc")] for n in m
                       if n.startswith("ood_") and n.endswith("_max_softmax_auroc")})
        for name in sets:
            cells = [_pct(m.get(f"ood_{name}_{score}_auroc")) for score in OOD_SCORES]
            out.append(f"| {r.experiment} | {t} | {name} | " + " | ".join(cells) + " |")
    head = ["", "| experiment | round | OOD set | AUROC % max softmax | AUROC % max logit | "
            "AUROC % logsumexp |", "|" + " --- |" * 6]
    return head + out if out else []


def _attack_table(rows: list[ExperimentRow]) -> list[str]:
    """Each recorded attack: robust accuracy of the model it was made on."""
    out = []
    for r in rows:
        for a in r.attacks:
            made, n = a["made_here"], a.get("n")
            robust = "-" if not n else f"{100 * (made[0] - made[1]) / n:.2f}"
            out.append(f"| {r.experiment} | {a['round']} | {a['method']} | {a['eps']:g} | "
                       f"{a['against']}:{a['against_round']} | {made[1]} / {made[0]} | "
                       f"{a['made_there'][2]} / {a['made_there'][1]} | {robust} |")
    head = ["", "| experiment | round | attack | eps | against | fool it / correct | "
            "other's that fool it / fool other | robust acc % |", "|" + " --- |" * 8]
    return head + out if out else []
