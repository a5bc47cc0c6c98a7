"""recipes/beyond_table.py: means, paired differences and "better on" from a report."""

from recipes import beyond_table as beyond


def row(name, ece, auroc, attacks=(), best=2):
    return {"experiment": name, "best_val_round": best, "rounds": 3,
            "diagnostics": {"2": {"test_nll": 0.2, "test_ece": ece,
                                  "ood_uniform_max_logit_auroc": auroc}},
            "attacks": list(attacks)}


def pgd(against, here, there):
    return {"method": "pgd", "eps": 0.3, "n": 100, "against": against, "round": 2,
            "against_round": 2, "made_here": here, "made_there": there}


def test_paired_table():
    rows = {}
    for seed, (b_ece, i_ece) in enumerate([(0.05, 0.03), (0.04, 0.05)]):
        p = f"softmax-n2000-s{seed}"
        rows[f"{p}-baseline"] = row(f"{p}-baseline", b_ece, 0.9)
        rows[f"{p}-icl"] = row(f"{p}-icl", i_ece, 0.95, [
            pgd(f"{p}-baseline", [90, 60, 10], [92, 80, 20])])
    groups = [beyond.measures(rows, f"softmax-n2000-s{s}") for s in (0, 1)]
    assert groups[0]["icl"]["pgd_0.3"] == 30.0  # (90 - 60) / 100 images
    assert groups[0]["baseline"]["pgd_0.3"] == 12.0  # the other way: (92 - 80) / 100
    lines = {ln.split(" | ")[0][2:]: ln for ln in beyond.table(groups).splitlines()[2:]}
    # ECE -2 and +1 points: mean -0.5, std 2.12; lower is better, so 1 of 2.
    assert "| -0.50 +- 2.12 | 1 of 2 |" in lines["test_ece"]
    assert lines["uniform_max_logit_auroc"].endswith("| 5.00 +- 0.00 | 2 of 2 |")
    assert lines["pgd_0.3"].endswith("| 18.00 +- 0.00 | 2 of 2 |")
