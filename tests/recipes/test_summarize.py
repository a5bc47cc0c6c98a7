"""The recipes' table maker: means, stds and paired differences from `icl report --json`."""

from recipes import summarize


def row(name, method, seed, test_best, parent=None, test_last=None, val_round=2):
    return {"experiment": name, "method": method, "mode": "softmax", "dataset": "idx",
            "train_size": 500, "seed": seed, "parent": parent, "rounds": 3,
            "test_error_0": 0.1, "test_error_last": test_last if test_last else test_best,
            "best_val_round": val_round, "test_error_best_val": test_best,
            "running": [], "errors": {"0": {"test": 0.1}, "1": {"test": test_best}}}


def test_paired_difference_mean_and_std_over_seeds():
    rows = [row("b0", "baseline", 0, 0.10), row("i0", "icl", 0, 0.09, parent="b0"),
            row("b1", "baseline", 1, 0.12), row("i1", "icl", 1, 0.12, parent="b1")]
    md = summarize.table(rows, "table1").splitlines()
    icl = next(line for line in md if "| icl |" in line)
    cells = [c.strip() for c in icl.split("|")[1:-1]]
    assert cells[4] == "2"  # seeds
    assert cells[5] == "?"  # subsets: these rows carry no data fingerprint
    assert cells[6] == "10.50 +- 2.12"  # mean and sample std of 9% and 12%
    assert cells[8] == "-0.50 +- 0.71"  # paired: -1 point and 0 points
    assert cells[9] == "1/2"  # strictly better on one seed of two
    assert cells[10] == "-1.00"  # paired t: -0.5 / (0.71 / sqrt 2)
    assert cells[11] == "0/2"  # no run stopped early
    assert cells[12] == "0.81"  # the paper's softmax ICL number


def test_pairs_only_rows_with_their_baselines_data_and_counts_subsets(capsys):
    rows = [row("b0", "baseline", 0, 0.10), row("i0", "icl", 0, 0.09, parent="b0"),
            row("b1", "baseline", 1, 0.12), row("i1", "icl", 1, 0.10, parent="b1")]
    for r, fp in zip(rows, ["a", "a", "b", "c"], strict=True):
        r["data_fingerprint"] = fp
    md = summarize.table(rows, None).splitlines()
    cells = [c.strip() for c in next(x for x in md if "| icl |" in x).split("|")[1:-1]]
    assert cells[5] == "2"  # two seeds, two subsets
    assert cells[8] == "-1.00"  # only seed 0: seed 1's ICL saw other data than its baseline
    assert "i1 and its baseline b1 saw different data" in capsys.readouterr().err


def test_falls_back_to_last_round_without_validation():
    r = row("b0", "baseline", 0, None, test_last=0.2)
    r["best_val_round"] = None
    assert summarize.selected(r) == 20.0


def test_complete_drops_a_group_with_an_unfinished_member(tmp_path):
    done = [row("b0", "baseline", 0, 0.10), row("i0", "icl", 0, 0.09, parent="b0")]
    half = [row("b1", "baseline", 1, 0.12), row("i1", "icl", 1, 0.12, parent="b1")]
    half[1]["rounds"], half[1]["errors"] = 0, {"0": {"test": 0.1}}  # stopped after C_0
    kept = summarize.complete(done + half, rounds=1)
    assert [r["experiment"] for r in kept] == ["b0", "i0"]


def test_complete_reads_every_row_as_if_it_stopped_at_that_round():
    r = row("i0", "icl", 0, 0.05)
    r["rounds"] = 3
    r["errors"] = {"0": {"test": 0.10, "val": 0.12}, "1": {"test": 0.08, "val": 0.09},
                   "2": {"test": 0.07, "val": 0.09}, "3": {"test": 0.05, "val": 0.04}}
    cut = summarize.complete([r], rounds=2)[0]
    assert cut["rounds"] == 2 and sorted(cut["errors"]) == ["0", "1", "2"]
    assert cut["test_error_last"] == 0.07
    assert cut["best_val_round"] == 1  # val ties 1 and 2: the earlier round, as icl report
    assert cut["test_error_best_val"] == 0.08
    assert r["best_val_round"] == 2 and "3" in r["errors"]  # the input row is untouched


def test_common_cuts_each_group_at_its_last_shared_round():
    base, kid, lone = row("b0", "baseline", 0, 0.1), row("i0", "icl", 0, 0.1, parent="b0"), \
        row("b1", "baseline", 1, 0.1)
    base["errors"] = {str(t): {"test": 0.1 - t / 100, "val": 0.2} for t in range(4)}
    kid["errors"] = {str(t): {"test": 0.1 - t / 50, "val": 0.2 - t / 50} for t in range(3)}
    lone["errors"] = {}
    cut = {r["experiment"]: r for r in summarize.common([base, kid, lone])}
    assert sorted(cut) == ["b0", "i0"]  # b1 evaluated nothing: left out
    assert cut["b0"]["rounds"] == cut["i0"]["rounds"] == 2
    assert cut["b0"]["test_error_last"] == 0.1 - 2 / 100
    assert cut["i0"]["best_val_round"] == 2


def test_a_sweep_of_one_setting_gets_one_line_per_value():
    cfg = {"seed": 0, "data": {"seed": 0, "root": "/a"}, "train": {"pn_weight": 1.0}}
    base = dict(row("b0", "baseline", 0, 0.10), config=cfg)
    one = dict(row("i0", "icl", 0, 0.09, parent="b0"), config=cfg)
    two = dict(row("i0w2", "icl", 0, 0.07, parent="b0"),
               config={**cfg, "seed": 1, "train": {"pn_weight": 2.0}})
    md = summarize.table(summarize.label_variants([base, one, two]), "table1").splitlines()
    lines = {line.split("|")[4].strip(): line for line in md[2:]}
    # The common setting (here a tie: the first one met) keeps the method's own name, so
    # it lines up with the same method at other sizes; the variant is named.
    assert sorted(lines) == ["baseline", "icl", "icl (pn_weight=2.0)"]
    assert "| -3.00 |" in lines["icl (pn_weight=2.0)"]  # paired with the same baseline
    assert lines["icl (pn_weight=2.0)"].endswith("| 0.81 |")  # the paper's ICL number
    for r in (base, one, two):
        r["errors"]["1"]["val"], r["best_val_round"] = r["test_error_best_val"] + 0.01, 1
    with_val = summarize.table([base, one, two], None, val=True).splitlines()
    assert "val % (selected round)" in with_val[0]
    assert with_val[-1].split("|")[7].strip() == "8.00"  # the pn_weight=2 run: 7 % + 1


def test_same_names_in_two_workspaces_stay_apart(tmp_path):
    import json
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([row("b0", "baseline", 0, 0.10),
                             row("i0", "icl", 0, 0.08, parent="b0")]))
    b.write_text(json.dumps([row("b0", "baseline", 0, 0.20)]))  # another b0, no kids
    rows = summarize.load([str(a), str(b)])
    icl = next(line for line in summarize.table(rows, None).splitlines() if "| icl |" in line)
    assert "-2.00" in icl  # paired with a's b0 (10 %), not b's (20 %)
    seeds = summarize.per_seed(rows).splitlines()[2:]
    assert len(seeds) == 2 and any("| -2.00 |" in s for s in seeds)


def test_by_round_means_over_seeds():
    rows = [row("b0", "baseline", 0, 0.10), row("b1", "baseline", 1, 0.12)]
    line = summarize.by_round(rows).splitlines()[2]
    assert line.endswith("| 10.00 | 11.00 |")  # t=0 both 10 %, t=1 mean of 10 and 12
    rows[1]["errors"]["2"] = {"test": 0.08}  # only seed 1 reached round 2: says so
    assert summarize.by_round(rows).splitlines()[2].endswith("| 10.00 | 11.00 | 8.00 (1) |")


def test_attacks_orient_each_record_and_average_the_shares():
    base, icl_row = row("b0", "baseline", 0, 0.10), row("i0", "icl", 0, 0.09, parent="b0")
    icl_row["attacks"] = [{"round": 3, "against": "b0", "against_round": 2, "eps": 0.125,
                           "made_here": [900, 600, 540], "made_there": [880, 800, 400]}]
    base1, icl1 = row("b1", "baseline", 1, 0.10), row("i1", "icl", 1, 0.09, parent="b1")
    base1["attacks"] = [{"round": 2, "against": "i1", "against_round": 3, "eps": 0.125,
                         "made_here": [880, 800, 600], "made_there": [900, 600, 600]}]
    lines = summarize.attacks([base, icl_row, base1, icl1]).splitlines()
    # Made on the baseline: 400 of 800 fool ICL; made on ICL: 540 of 600 fool the baseline.
    assert "| 2, 3 | 800 | 400 (50.0 %) | 600 | 540 (90.0 %) |" in lines[2]
    # The second record was made from the baseline's side; it is turned around the same way.
    assert "| 800 | 600 (75.0 %) | 600 | 600 (100.0 %) |" in lines[3]
    assert "62.50 +- 17.68 %" in lines[4] and "95.00 +- 7.07 %" in lines[4]


def test_keep_stopped_counts_a_run_that_stopped_early_at_its_last_round():
    base = row("b0", "baseline", 0, 0.10)
    kid = row("i0", "icl", 0, 0.09, parent="b0")
    for r in (base, kid):
        r["rounds"] = 3
        r["errors"] = {str(t): {"test": 0.10 - t / 100, "val": 0.2 - t / 100}
                       for t in range(4)}
    kid["rounds"], kid["errors"] = 1, {t: kid["errors"][t] for t in ("0", "1")}  # diverged
    assert summarize.complete([base, kid], rounds=3) == []  # dropped without the flag
    kept = {r["experiment"]: r for r in summarize.complete([base, kid], 3, keep_stopped=True)}
    assert kept["b0"].get("stopped") is None and kept["b0"]["best_val_round"] == 3
    assert kept["i0"]["stopped"] == 1 and kept["i0"]["best_val_round"] == 1
    line = next(x for x in summarize.table(list(kept.values()), None).splitlines()
                if "| icl |" in x)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[11] == "1/1"  # the stopped column counts it
    assert cells[8] == "2.00"  # paired as it stands: 9 % (round 1) - 7 % (round 3)
    assert "*stopped after 1" in summarize.per_seed(list(kept.values()))


def test_val_paired_difference_is_what_a_sweep_chooses_by():
    base, kid = row("b0", "baseline", 0, 0.10), row("i0", "icl", 0, 0.09, parent="b0")
    base["errors"]["2"], kid["errors"]["2"] = {"test": 0.1, "val": 0.15}, {"test": 0.09,
                                                                          "val": 0.12}
    head, _, *lines = summarize.table([base, kid], None, val=True).splitlines()
    col = [c.strip() for c in head.split("|")[1:-1]].index("val paired diff")
    icl = next(x for x in lines if "| icl |" in x)
    assert [c.strip() for c in icl.split("|")[1:-1]][col] == "-3.00"


def test_attacks_are_averaged_per_icl_row_and_a_repeated_pair_counts_once():
    base = row("b0", "baseline", 0, 0.10)
    one = dict(row("i0", "icl", 0, 0.09, parent="b0"), label="icl (pn_weighting=drawn)")
    two = dict(row("i0b", "icl", 0, 0.09, parent="b0"), label="icl")
    rec = {"round": 3, "against": "b0", "against_round": 2, "eps": 0.125,
           "made_here": [900, 600, 540], "made_there": [880, 800, 400]}
    one["attacks"] = [dict(rec, made_there=[880, 800, 800]), rec]  # run twice: latest counts
    two["attacks"] = [dict(rec, made_there=[880, 800, 200])]
    lines = summarize.attacks([base, one, two]).splitlines()
    assert len([x for x in lines if x.startswith("| idx |")]) == 2
    means = {x.split("|")[4].strip(): x for x in lines if x.startswith("| mean")}
    assert "50.00 %" in means["icl (pn_weighting=drawn)"]
    assert "25.00 %" in means["icl"]



def test_between_forms_as_common_as_each_other_the_baselines_one_is_the_methods():
    """Two forms with as many runs each: the one the baselines carry (the default they were
    made with) keeps the method's name, whichever was met first; the other is named."""
    rows = []
    for seed in (0, 1):
        base = row(f"b{seed}", "baseline", seed, 0.10)
        base["config"] = {"train": {"pn_weighting": "per-sample"}}
        rows.append(base)
        for form in ("drawn", "per-sample"):  # drawn first
            r = row(f"i{seed}{form}", "icl", seed, 0.09, parent=f"b{seed}")
            r["config"] = {"train": {"pn_weighting": form}}
            rows.append(r)
    labels = {r["experiment"]: r["label"] for r in summarize.label_variants(rows)}
    assert labels["i0per-sample"] == labels["i1per-sample"] == "icl"
    assert labels["i0drawn"] == labels["i1drawn"] == "icl (pn_weighting=drawn)"
