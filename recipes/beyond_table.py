"""Markdown tables for recipes/beyond_accuracy.sh from ``icl report --json``: per method,
mean +- std over seeds of test NLL, test ECE, OOD AUROC per set and score, and PGD robust
accuracy per eps, each model at its best-validation round; and the paired differences
(method - baseline, same seed) with their std.

    python recipes/beyond_table.py report.json --size 2000 --mode softmax
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

METHODS = ("baseline", "icl-noise", "icl")
SCORES = ("max_softmax", "max_logit", "logsumexp")


def chosen(row: dict) -> dict:
    """The round metrics at the experiment's best-validation round (else its last)."""
    t = row["best_val_round"] if row["best_val_round"] is not None else row["rounds"]
    return row["diagnostics"].get(str(t), {})


def measures(rows: dict[str, dict], prefix: str) -> dict[str, dict[str, float]]:
    """{method: {measure: value}} of one seed's group ``prefix``."""
    out: dict[str, dict[str, float]] = {}
    for m in METHODS:
        row = rows.get(f"{prefix}-{m}")
        if row is None:
            continue
        d = chosen(row)
        vals = out.setdefault(m, {})
        vals["round"] = row["best_val_round"] if row["best_val_round"] is not None else (
            row["rounds"])
        for key in ("test_nll", "test_ece"):
            if d.get(key) is not None:
                vals[key] = d[key] * (100 if key.endswith("ece") else 1)
        for key, v in d.items():
            if key.startswith("ood_") and key.endswith("_auroc") and v is not None:
                vals[key[4:]] = 100 * v
        with_q = [int(t) for t, m in row["diagnostics"].items() if "quality_frechet" in m]
        if with_q:  # sample quality of the last round's pseudo-negatives
            q = row["diagnostics"][str(max(with_q))]
            vals["quality_target_share"] = 100 * q["quality_target_share"]
            vals["quality_frechet"] = q["quality_frechet"]
        for a in row["attacks"]:
            if a.get("method") == "pgd" and a.get("n"):
                made, there = a["made_here"], a["made_there"]
                vals[f"pgd_{a['eps']:g}"] = 100 * (made[0] - made[1]) / a["n"]
                if a["against"] == f"{prefix}-baseline":
                    out.setdefault("baseline", {})[f"pgd_{a['eps']:g}"] = (
                        100 * (there[0] - there[1]) / a["n"])
    return out


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} +- {sd:.2f}"


def table(groups: list[dict[str, dict[str, float]]]) -> str:
    keys = sorted({k for g in groups for vals in g.values() for k in vals},
                  key=lambda k: (k != "round", not k.startswith("test"), k.startswith("pgd"),
                                 k))
    head = ["| measure | " + " | ".join(METHODS) + " | ICL-noise - baseline | "
            "ICL - baseline | ICL better on |", "|" + " --- |" * (len(METHODS) + 4)]
    lines = []
    for k in keys:
        cells = [fmt([g[m][k] for g in groups if k in g.get(m, {})]) for m in METHODS]
        diffs, better = [], "-"
        for m in ("icl-noise", "icl"):
            pairs = [g[m][k] - g["baseline"][k] for g in groups
                     if k in g.get(m, {}) and k in g.get("baseline", {})]
            diffs.append(fmt(pairs))
            if m == "icl" and pairs and k != "round":
                # Lower is better for NLL and ECE, higher for AUROC and robust accuracy.
                sign = -1 if k.startswith(("test_", "quality_frechet")) else 1
                better = f"{sum(sign * p > 0 for p in pairs)} of {len(pairs)}"
        lines.append(f"| {k} | " + " | ".join(cells + diffs) + f" | {better} |")
    return "\n".join(head + lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report")
    p.add_argument("--size", default="2000")
    p.add_argument("--mode", default="softmax")
    args = p.parse_args()
    rows = {r["experiment"]: r for r in json.load(open(args.report))}
    pattern = re.compile(rf"^({re.escape(args.mode)}-n{re.escape(str(args.size))}-s\d+)-")
    prefixes = sorted({m.group(1) for name in rows if (m := pattern.match(name))})
    groups = [measures(rows, p) for p in prefixes]
    print(f"## Beyond test error: {args.mode}, {args.size} images, {len(groups)} seed(s)")
    print()
    print("NLL in nats, ECE / AUROC / PGD robust accuracy in %; mean +- std over seeds; "
          "differences paired by seed. round: the best-validation round measured; AUROC rows: "
          "<set>_<score>_auroc; pgd_EPS: robust accuracy at eps EPS (pixel units); quality_*: "
          "the last round's pseudo-negatives as a reference MLP sees them (share assigned "
          "to their target, %; classifier-feature Frechet distance to test images).")
    attacked = sorted({a["n"] for name in rows if pattern.match(name)
                       for a in rows[name]["attacks"] if a.get("method") == "pgd" and a.get("n")})
    if attacked:
        print(f"PGD on the first {' / '.join(map(str, attacked))} test images.")
    ood_n = sorted({int(d["ood_test_images"]) for name in rows if pattern.match(name)
                    for d in rows[name]["diagnostics"].values() if "ood_test_images" in d})
    if ood_n:
        print(f"OOD on the first {' / '.join(map(str, ood_n))} test images against as many "
              "of each set.")
    print()
    print(table(groups))


if __name__ == "__main__":
    main()
