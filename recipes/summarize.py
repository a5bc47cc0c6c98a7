"""Turn `icl report --json` into the recipes' markdown tables and plots.

Groups experiments by (dataset, mode, train size, method) over seeds and prints test error
(%) of the round chosen on validation error, mean +- std over seeds, the paired difference
to the baseline that shares its C_0 (``--from``), and the paper's number beside it.

    python recipes/summarize.py WS/report.json [WS2/report.json ...] --paper table1
        [--rounds 5] [--seeds 0 1] [--val] [--per-seed] [--by-round] [--attacks]
        [--choose pn_weighting=per-sample,batch-mean,drawn] [--plot-rounds F.png]
        [--plot-sizes F.png]

``--rounds N`` keeps only paired groups (a baseline and the experiments started from its
C_0) in which every experiment finished round N, so a half-run seed never enters a mean,
and reads every experiment as if it had stopped at round N. ``--rounds common`` cuts each
group at the last round all its experiments reached (runs stopped at a deadline).
``--keep-stopped`` (with ``--rounds N``) keeps a group whose runs stopped early, each read
at its last round (a run that diverged keeps its best validation round before the
divergence): such a run is marked ``*`` beside its numbers, counted in the "stopped" column
and in every mean, never dropped.

``--choose SETTING=SIMPLEST,...,LAST`` applies RESULTS.md's rule for a default among the ICL
rows that differ in SETTING: per seed, d(s) = the row's validation error minus its paired
baseline's (each at its best validation round); the candidate with the lowest mean d wins
unless a simpler one (earlier in the list) is within one std of the per-seed differences
between the two, |mean(d_best - d_simpler)| <= std(d_best - d_simpler); then the simplest
such one wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict

# Test error (%) from the paper (SPEC, "Paper numbers"): {table: {(mode, method): value}}.
PAPER = {
    "table1": {("ova", "baseline"): 0.91, ("softmax", "baseline"): 0.89,
               ("ova", "icl-noise"): 0.92, ("softmax", "icl-noise"): 0.87,
               ("ova", "icl"): 0.78, ("softmax", "icl"): 0.81},
    "table2-noaug": {("ova", "baseline"): 13.44, ("softmax", "baseline"): 12.38,
                     ("ova", "icl-noise"): 13.28, ("softmax", "icl-noise"): 11.94,
                     ("ova", "icl"): 12.94, ("softmax", "icl"): 11.46},
    "table2-aug": {("ova", "baseline"): 6.70, ("softmax", "baseline"): 7.06,
                   ("ova", "icl-noise"): 6.58, ("softmax", "icl-noise"): 6.90,
                   ("ova", "icl"): 6.52, ("softmax", "icl"): 6.70},
    "table3": {("softmax", "baseline"): 2.01, ("softmax", "icl-noise"): 1.99,
               ("softmax", "icl"): 1.93},
}
METHOD_ORDER = {"baseline": 0, "icl-noise": 1, "icl": 2}
# Settings that differ between seeds of one setting, not between settings.
NOT_A_SETTING = {"seed", "data.seed", "data.root", "data.download"}


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}"


def seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def load(paths: list[str]) -> list[dict]:
    """Rows of several reports. Experiment names are unique only within a workspace, so
    each row also records which report (``ws``) it came from."""
    rows = []
    for i, path in enumerate(paths):
        with open(path) as f:
            rows += [dict(r, ws=i) for r in json.load(f)]
    return rows


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 0.01}} -> {"train.lr": 0.01}."""
    out: dict[str, object] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def label_variants(rows: list[dict]) -> list[dict]:
    """Experiments of one method that differ in a setting (a sweep: ``icl init --from
    ... --pn-weight 2``) get a label naming where they differ from the group's most common
    value, ``icl (pn_weight=2.0)``, so the tables and plots keep them apart; the others
    (the common setting) are labelled by their method alone, and so line up across sizes.
    Between values as common as each other in the group, the one most rows of the file
    carry (the baselines' too: the default they were made with) is the common one."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["mode"], r["train_size"], r["method"])].append(r)
    everywhere = [flat(r.get("config") or {}) for r in rows]
    for rs in groups.values():
        settings = [flat(r.get("config") or {}) for r in rs]
        keys = sorted({k for st in settings for k in st if k not in NOT_A_SETTING
                       and len({repr(x.get(k)) for x in settings}) > 1})
        common = {k: _mode([repr(st.get(k)) for st in settings],
                           Counter(repr(st.get(k)) for st in everywhere)) for k in keys}
        for r, st in zip(rs, settings, strict=True):
            named = ", ".join(f"{k.rsplit('.', 1)[-1]}={st.get(k)}" for k in keys
                              if repr(st.get(k)) != common[k])
            r["label"] = f"{r['method']} ({named})" if named else r["method"]
    return rows


def _mode(values: list[str], overall: Counter) -> str:
    """The most common of ``values``; among those as common, the most common ``overall``,
    then the first met."""
    counts = Counter(values)
    top = max(counts.values())
    tied = [v for v in dict.fromkeys(values) if counts[v] == top]
    return max(tied, key=lambda v: overall[v])  # max keeps the first of equals


def label(row: dict) -> str:
    return row.get("label", row["method"])


def method_order(label: str) -> int:
    return METHOD_ORDER.get(label.split(" (")[0], 9)


def ref(row: dict, name: str) -> str:
    """A key for experiment ``name`` in the workspace of ``row``."""
    return f"{row.get('ws', 0)}:{name}"


def group_key(row: dict) -> str:
    """The paired group of a row: its baseline's key (``--from`` parent) or its own."""
    return ref(row, row["parent"] or row["experiment"])


def same_data(a: dict, b: dict) -> bool:
    """Two rows saw the same images (their data fingerprints match; rows from before icl
    kept fingerprints are taken on trust, as their ``--from`` shares the data)."""
    fa, fb = a.get("data_fingerprint"), b.get("data_fingerprint")
    return fa is None or fb is None or fa == fb


def subsets(rs: list[dict]) -> str:
    """How many distinct training/validation subsets a line's seeds drew ("?" when a row
    predates data fingerprints)."""
    prints = [r.get("data_fingerprint") for r in rs]
    return "?" if None in prints else str(len(set(prints)))


def paired_groups(rows: list[dict]) -> list[list[dict]]:
    """The rows of each paired group (a baseline and the experiments started from it)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[group_key(r)].append(r)
    return list(groups.values())


def by_method(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by (dataset, mode, train size, method), in table order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["mode"], r["train_size"] or 0, label(r))].append(r)
    return {k: groups[k] for k in sorted(
        groups, key=lambda k: (k[0], k[1], k[2], method_order(k[3]), k[3]))}


def selected(row: dict) -> float | None:
    """Test error (%) of the round with the lowest validation error (else the last)."""
    e = row["test_error_best_val"]
    if e is None:
        e = row["test_error_last"]
    return None if e is None else 100 * e


def selected_val(row: dict) -> float | None:
    """Validation error (%) of the round chosen on it (None without a validation split)."""
    e = row["errors"].get(str(row["best_val_round"]), {})
    return 100 * e["val"] if "val" in e else None


def paired_t(diffs: list[float]) -> str:
    """The paired t statistic of the differences, mean / (std / sqrt(n)) ("-" for fewer
    than 2, "inf" when they do not vary)."""
    if len(diffs) < 2:
        return "-"
    sd = statistics.stdev(diffs)
    if sd == 0:
        return "0.00" if statistics.mean(diffs) == 0 else "inf"
    return f"{statistics.mean(diffs) / (sd / len(diffs) ** 0.5):.2f}"


def paired_diffs(rs: list[dict], by_key: dict[str, dict], value) -> list[float]:
    """``value(row) - value(its baseline)`` for every row paired with a baseline that saw
    the same data."""
    diffs = []
    for r in rs:
        base = by_key.get(group_key(r)) if r["parent"] else None
        if base is None or not same_data(r, base):
            continue
        a, b = value(r), value(base)
        if a is not None and b is not None:
            diffs.append(a - b)
    return diffs


def table(rows: list[dict], paper: str | None, val: bool = False) -> str:
    """One line per (data, mode, size, method or setting); ``val`` adds the validation error
    each model was chosen on and its paired difference (what a sweep picks its setting by).
    The gain's paired t and sign count ("better on") are of the test error."""
    by_key = {group_key(r): r for r in rows if not r["parent"]}
    for r in rows:
        base = by_key.get(group_key(r)) if r["parent"] else None
        if base is not None and not same_data(r, base):
            print(f"warning: {r['experiment']} and its baseline {base['experiment']} "
                  "saw different data; left out of the paired difference", file=sys.stderr)
    head = ["data", "mode", "train size", "method", "seeds", "subsets"] + (
        ["val % (selected round)", "val paired diff"] if val else []) + [
        "test % (val-selected)", "test % (last round)", "paired diff vs baseline",
        "better on", "paired t", "stopped", "paper %"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (data, mode, size, method), rs in by_method(rows).items():
        sel = [e for e in map(selected, rs) if e is not None]
        last = [100 * r["test_error_last"] for r in rs if r["test_error_last"] is not None]
        diffs = paired_diffs(rs, by_key, selected)
        wins = f"{sum(d < 0 for d in diffs)}/{len(diffs)}" if diffs else "-"
        ref = PAPER.get(paper or "", {}).get((mode, method.split(" (")[0]))
        vals = [v for v in map(selected_val, rs) if v is not None]
        stopped = sum(bool(r.get("stopped")) for r in rs)
        cells = [data, mode, size or "all", method, len(rs), subsets(rs)] + (
            [mean_std(vals), mean_std(paired_diffs(rs, by_key, selected_val))]
            if val else []) + [
            mean_std(sel), mean_std(last), mean_std(diffs), wins, paired_t(diffs),
            f"{stopped}/{len(rs)}", "-" if ref is None else f"{ref:.2f}"]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(out)


def choose(rows: list[dict], setting: str, order: list[str]) -> str:
    """The default-picking rule of ``--choose`` as a table of per-seed d and its verdict."""
    by_key = {group_key(r): r for r in rows if not r["parent"]}
    d: dict[str, dict[int, float]] = {v: {} for v in order}
    for r in rows:
        st = flat(r.get("config") or {})
        value = next((str(v) for k, v in st.items() if k == setting
                      or k.endswith("." + setting)), "")
        base = by_key.get(group_key(r)) if r["parent"] else None
        if r["method"] != "icl" or value not in d or base is None or not same_data(r, base):
            continue
        a, b = selected_val(r), selected_val(base)
        if a is not None and b is not None:
            d[value][r["seed"]] = a - b
    seeds_ = sorted({s for ds in d.values() for s in ds})
    out = [f"| {setting} | " + " | ".join(f"d, seed {s}" for s in seeds_)
           + " | mean d | vs the lowest: mean +- std of d_lowest - d_this | within one std |",
           "|" + " --- |" * (len(seeds_) + 4)]
    means = {v: statistics.mean(ds.values()) for v, ds in d.items() if ds}
    if not means:
        return "no ICL rows differ in " + setting
    best = min(means, key=lambda v: (means[v], order.index(v)))
    ties = []
    for v in order:
        if v not in means:
            continue
        common_seeds = sorted(set(d[best]) & set(d[v]))
        diffs = [d[best][s] - d[v][s] for s in common_seeds]
        tie = (v == best or (len(diffs) >= 2 and abs(statistics.mean(diffs))
                             <= statistics.stdev(diffs)))
        if tie:
            ties.append(v)
        cells = [f"{d[v][s]:+.2f}" if s in d[v] else "-" for s in seeds_]
        vs = "-" if v == best else mean_std(diffs)
        out.append(f"| {v} | " + " | ".join(cells) + f" | {means[v]:+.2f} | {vs} | "
                   f"{'yes' if tie else 'no'} |")
    chosen = next(v for v in order if v in ties)
    out.append(f"\nlowest mean d: {best}; chosen by the rule: {chosen}"
               + (" (the simplest within one std)" if chosen != best else ""))
    return "\n".join(out)


def complete(rows: list[dict], rounds: int, keep_stopped: bool = False) -> list[dict]:
    """The rows of paired groups whose every experiment has finished round ``rounds``, each
    cut to rounds 0..``rounds`` (so a method that ran further is compared at the same round,
    and its round is chosen among those alone). ``keep_stopped``: a group with runs that
    stopped early stays; each such run is read at its last evaluated round and marked
    ``stopped`` (its last round), so it is counted, never dropped."""
    out = []
    for rs in paired_groups(rows):
        done = [str(rounds) in r["errors"] and r["rounds"] >= rounds for r in rs]
        if all(done):
            out += [up_to(r, rounds) for r in rs]
        elif keep_stopped:
            for r, finished in zip(rs, done, strict=True):
                last = max((int(t) for t, e in r["errors"].items() if "test" in e),
                           default=None)
                if finished or last is None:
                    out += [up_to(r, rounds)] if finished else []
                    continue
                out.append(dict(up_to(r, last), stopped=last))
    return out


def common(rows: list[dict]) -> list[dict]:
    """Each paired group cut at the last round that every one of its experiments evaluated
    (for runs stopped at a deadline); groups with no such round are left out."""
    out = []
    for rs in paired_groups(rows):
        n = min(max((int(t) for t, e in r["errors"].items() if "test" in e), default=-1)
                for r in rs)
        if n >= 0:
            out += [up_to(r, n) for r in rs]
    return out


def up_to(row: dict, rounds: int) -> dict:
    """``row`` as if its experiment had stopped after round ``rounds``: the same rule as
    `icl report` (lowest validation error, the earlier round on a tie)."""
    errs = {t: e for t, e in row["errors"].items() if int(t) <= rounds}
    with_val = [int(t) for t, e in errs.items() if "val" in e and "test" in e]
    best = min(with_val, key=lambda t: (errs[str(t)]["val"], t)) if with_val else None
    return dict(row, rounds=rounds, errors=errs,
                test_error_last=errs.get(str(rounds), {}).get("test"), best_val_round=best,
                test_error_best_val=None if best is None else errs[str(best)]["test"])


def per_seed(rows: list[dict]) -> str:
    """One line per paired group: each method's val-selected test error and its round."""
    methods = sorted({label(r) for r in rows}, key=lambda m: (method_order(m), m))
    kids: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        kids[group_key(r)][label(r)] = r
    with_diff = {"icl", "baseline"} <= set(methods)  # a sweep has no plain "icl" line
    out = ["| data | mode | train size | seed | "
           + " | ".join(f"{m} % (round)" for m in methods)
           + (" | icl - baseline |" if with_diff else " |"),
           "|" + " --- |" * (len(methods) + 4 + with_diff)]
    def cell(r: dict | None) -> str:
        if r is None or selected(r) is None:
            return "-"
        t = r["best_val_round"]
        mark = f" *stopped after {r['stopped']}" if r.get("stopped") is not None else ""
        return f"{selected(r):.2f} ({'-' if t is None else t}){mark}"
    def order(g: dict[str, dict]) -> tuple:
        r = next(iter(g.values()))
        return r["dataset"], r["mode"], r["train_size"] or 0, r["seed"]

    for g in sorted(kids.values(), key=order):
        first = next(iter(g.values()))
        icl, base = g.get("icl"), g.get("baseline")
        diff = (f"{selected(icl) - selected(base):+.2f}" if icl and base
                and selected(icl) is not None and selected(base) is not None else "-")
        out.append(f"| {first['dataset']} | {first['mode']} | {first['train_size'] or 'all'} | "
                   f"{first['seed']} | " + " | ".join(cell(g.get(m)) for m in methods)
                   + (f" | {diff} |" if with_diff else " |"))
    return "\n".join(out)


def by_round(rows: list[dict]) -> str:
    """Mean test error (%) over seeds at every round (Figure 4's curves as a table); a mean
    over fewer seeds than the row's (some stopped earlier) says how many: ``0.91 (1)``."""
    last = max((int(t) for r in rows for t in r["errors"]), default=0)
    out = ["| data | mode | train size | method | seeds | "
           + " | ".join(f"t={t}" for t in range(last + 1)) + " |",
           "|" + " --- |" * (last + 6)]
    for (data, mode, size, method), rs in by_method(rows).items():
        cells = []
        for t in range(last + 1):
            xs = [100 * r["errors"][str(t)]["test"] for r in rs
                  if "test" in r["errors"].get(str(t), {})]
            few = f" ({len(xs)})" if 0 < len(xs) < len(rs) else ""
            cells.append(f"{statistics.mean(xs):.2f}{few}" if xs else "-")
        out.append(f"| {data} | {mode} | {size or 'all'} | {method} | {len(rs)} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def attacks(rows: list[dict]) -> str:
    """Two-way FGSM records (``icl attack``) between a baseline and an ICL model, one line
    each, then per ICL row (method or setting) the mean +- std of both shares over its
    lines, beside the paper's counts. A pair attacked more than once (a recipe run again)
    counts once: its latest record."""
    by_key = {ref(r, r["experiment"]): r for r in rows}
    out = ["| data | train size | seed | icl row | eps | rounds (baseline, icl) | made on "
           "baseline: fool it | of those, fool ICL | made on ICL: fool it | of those, fool "
           "baseline |", "|" + " --- |" * 10]
    lines: dict[tuple, tuple] = {}
    for r in rows:
        for a in r.get("attacks", []):
            other = by_key.get(ref(r, a["against"]))
            if a.get("method", "fgsm") != "fgsm":  # PGD records have tables of their own
                continue
            if other is None or {r["method"], other["method"]} != {"baseline", "icl"}:
                continue
            icl, base = (r, other) if r["method"] == "icl" else (other, r)
            if r["method"] == "icl":
                on_base, on_icl, rounds = a["made_there"], a["made_here"], (a["against_round"],
                                                                            a["round"])
            else:
                on_base, on_icl, rounds = a["made_here"], a["made_there"], (a["round"],
                                                                            a["against_round"])
            key = (ref(icl, icl["experiment"]), ref(base, base["experiment"]), a["eps"])
            lines[key] = (icl, a["eps"], rounds, on_base, on_icl)
    shares: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for icl, eps, rounds, on_base, on_icl in lines.values():
        got = shares[label(icl)]
        got[0].append(100 * on_base[2] / max(1, on_base[1]))
        got[1].append(100 * on_icl[2] / max(1, on_icl[1]))
        out.append(f"| {icl['dataset']} | {icl['train_size'] or 'all'} | {icl['seed']} | "
                   f"{label(icl)} | {eps:g} | {rounds[0]}, {rounds[1]} | {on_base[1]} | "
                   f"{on_base[2]} ({got[0][-1]:.1f} %) | {on_icl[1]} | "
                   f"{on_icl[2]} ({got[1][-1]:.1f} %) |")
    for name in sorted(shares, key=lambda m: (method_order(m), m)):
        base_side, icl_side = shares[name]
        out.append(f"| mean +- std | | {seeds(len(base_side))} | {name} | | | | "
                   f"{mean_std(base_side)} % | | {mean_std(icl_side)} % |")
    out.append("| paper (MNIST, full) | 60000 | | icl | 0.125 | | 6876 | 4661 (67.8 %) | 5989 | "
               "5542 (92.5 %) |")
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"baseline": "tab:blue", "icl-noise": "tab:orange", "icl": "tab:green"}
VARIANT_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def color(method: str, variants: list[str]) -> str:
    """A method's own colour; a sweep's settings (``icl (pn_weight=2)``) each get one of
    their own, never one a method already has."""
    if method in COLORS:
        return COLORS[method]
    return VARIANT_COLORS[variants.index(method) % len(VARIANT_COLORS)]


def plot_rounds(rows: list[dict], path: str) -> None:
    """Figure 4: mean test error against round, one panel per training-set size."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    curves: dict[int, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        for t, e in r["errors"].items():
            if "test" in e:
                curves[r["train_size"] or 0][label(r)][int(t)].append(100 * e["test"])
    sizes = sorted(curves)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.3), dpi=120,
                             squeeze=False)
    variants = sorted({m for c in curves.values() for m in c if m not in COLORS})
    for ax, size in zip(axes[0], sizes, strict=True):
        for method in sorted(curves[size], key=lambda m: (method_order(m), m)):
            pts = curves[size][method]
            ts = sorted(pts)
            n = max(len(pts[t]) for t in ts)
            ax.plot(ts, [statistics.mean(pts[t]) for t in ts], marker="o",
                    color=color(method, variants), label=f"{method} ({seeds(n)})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{size or 'all'} training images", fontsize=9)
        ax.set_xlabel("round t")
        ax.set_ylabel("test error (%), mean over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.savefig(path, bbox_inches="tight")


def plot_sizes(rows: list[dict], path: str) -> None:
    """Figure 5: val-selected test error against training-set size, std bars."""
    plt = _plt()
    pts: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if selected(r) is not None:
            pts[label(r)][r["train_size"] or 60000].append(selected(r))
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    variants = sorted(m for m in pts if m not in COLORS)
    for i, method in enumerate(sorted(pts, key=lambda m: (method_order(m), m))):
        sizes = sorted(pts[method])
        means = [statistics.mean(pts[method][s]) for s in sizes]
        stds = [statistics.stdev(pts[method][s]) if len(pts[method][s]) > 1 else 0.0
                for s in sizes]
        shifted = [s * (1 + 0.04 * (i - 1)) for s in sizes]  # side by side on a log axis
        ax.errorbar(shifted, means, yerr=stds, marker="o", capsize=3, label=method,
                    color=color(method, variants))
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", metavar="report")
    parser.add_argument("--paper", choices=sorted(PAPER))
    parser.add_argument("--rounds", help="N: keep only paired groups that finished round N, "
                        "read at round N; common: each group at its last common round")
    parser.add_argument("--keep-stopped", action="store_true",
                        help="with --rounds N: keep runs that stopped early (diverged), "
                        "each at its last round, marked and counted")
    parser.add_argument("--seeds", type=int, nargs="+", help="keep only these seeds")
    parser.add_argument("--val", action="store_true",
                        help="add the validation error each model was chosen on")
    parser.add_argument("--per-seed", action="store_true", help="also a table per seed")
    parser.add_argument("--by-round", action="store_true",
                        help="also mean test error at every round")
    parser.add_argument("--attacks", action="store_true",
                        help="also the two-way FGSM records (icl attack)")
    parser.add_argument("--choose", metavar="SETTING=A,B,C",
                        help="the default among ICL rows differing in SETTING by RESULTS.md's "
                        "rule (validation error paired with the baseline; the simplest "
                        "first)")
    parser.add_argument("--plot-rounds")
    parser.add_argument("--plot-sizes")
    args = parser.parse_args()
    rows = load(args.reports)
    if args.seeds is not None:
        rows = [r for r in rows if r["seed"] in args.seeds]
    if args.rounds == "common":
        rows = common(rows)
    elif args.rounds is not None:
        rows = complete(rows, int(args.rounds), keep_stopped=args.keep_stopped)
    rows = label_variants(rows)  # after the filters: settings of rows left out do not count
    print(table(rows, args.paper, val=args.val))
    if args.per_seed:
        print("\n" + per_seed(rows))
    if args.by_round:
        print("\n" + by_round(rows))
    if args.attacks:
        print("\n" + attacks(rows))
    if args.choose:
        setting, _, values = args.choose.partition("=")
        print("\n" + choose(rows, setting, values.split(",")))
    if args.plot_rounds:
        plot_rounds(rows, args.plot_rounds)
    if args.plot_sizes:
        plot_sizes(rows, args.plot_sizes)


if __name__ == "__main__":
    main()
