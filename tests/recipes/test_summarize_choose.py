"""``summarize.py --choose``: RESULTS.md's rule that picks a default among ICL rows that
differ in one setting, on validation error paired with each row's baseline."""

from recipes import summarize


def row(name, method, seed, val, parent=None, form=None):
    """An experiment whose best validation round (1) had validation error ``val``."""
    config = {"train": {"pn_weighting": form}} if form else {"train": {}}
    return {"experiment": name, "method": method, "mode": "softmax", "dataset": "idx",
            "train_size": 2000, "seed": seed, "parent": parent, "rounds": 1,
            "test_error_0": 0.1, "test_error_last": 0.05, "best_val_round": 1,
            "test_error_best_val": 0.05, "running": [], "config": config,
            "errors": {"0": {"test": 0.1, "val": 0.1}, "1": {"test": 0.05, "val": val}}}


def group(seed, base, **forms):
    """A seed's baseline and its ICL rows, one per form, with these validation errors."""
    rows = [row(f"b{seed}", "baseline", seed, base)]
    rows += [row(f"{f}{seed}", "icl", seed, v, parent=f"b{seed}", form=f.replace("_", "-"))
             for f, v in forms.items()]
    return rows


ORDER = ["per-sample", "batch-mean", "drawn"]


def verdict(rows):
    return summarize.choose(rows, "pn_weighting", ORDER).splitlines()[-1]


def test_the_lowest_mean_wins_when_the_simpler_forms_are_clearly_worse():
    # drawn is 1 point better than per-sample on every seed, 0.5 better than batch-mean:
    # the differences do not vary, so no simpler form is within one std.
    rows = [r for s, base in enumerate([0.06, 0.07, 0.05]) for r in group(
        s, base, per_sample=base, batch_mean=base - 0.005, drawn=base - 0.01)]
    out = summarize.choose(rows, "pn_weighting", ORDER)
    assert "| per-sample | +0.00 | +0.00 | +0.00 | +0.00 | -1.00 +- 0.00 | no |" in out
    assert verdict(rows) == "lowest mean d: drawn; chosen by the rule: drawn"


def test_a_simpler_form_within_one_std_of_the_paired_differences_wins():
    # drawn's mean d is the lowest (-1.0 against -0.5 points), but seed by seed the gap
    # to per-sample swings from -2 to +1 points: within one std.
    rows = (group(0, 0.06, per_sample=0.06, drawn=0.04)
            + group(1, 0.06, per_sample=0.05, drawn=0.06)
            + group(2, 0.06, per_sample=0.055, drawn=0.05))
    out = summarize.choose(rows, "pn_weighting", ORDER)
    assert "| drawn | -2.00 | +0.00 | -1.00 | -1.00 | - | yes |" in out
    assert verdict(rows) == ("lowest mean d: drawn; chosen by the rule: per-sample "
                             "(the simplest within one std)")


def test_seeds_a_form_lacks_are_left_out_of_its_comparison():
    rows = (group(0, 0.06, per_sample=0.05, drawn=0.04)
            + group(1, 0.06, per_sample=0.05, drawn=0.04)
            + group(2, 0.06, drawn=0.03))  # per-sample never ran on seed 2
    out = summarize.choose(rows, "pn_weighting", ORDER)
    assert "| per-sample | -1.00 | -1.00 | - | -1.00 | -1.00 +- 0.00 | no |" in out
    assert verdict(rows) == "lowest mean d: drawn; chosen by the rule: drawn"
