"""The benchmarks' statistics: a ratio's bootstrap interval and the verdict read from it."""

import json

import pytest

from benchmarks.common import (
    Result,
    Scale,
    bootstrap_ratio,
    half_width,
    interleave_until,
    paired_result,
    verdict,
)


def test_bootstrap_interval_brackets_the_median_and_shrinks_with_more_pairs():
    num = [1.00, 1.10, 0.95, 1.05, 1.02, 0.98, 1.07, 0.93, 1.01]
    den = [1.0] * len(num)
    med, lo, hi = bootstrap_ratio(num, den)
    assert med == pytest.approx(1.01)
    assert lo <= med <= hi and hi - lo > 0
    med9, lo9, hi9 = bootstrap_ratio(num * 9, den * 9)  # same spread, 9x the pairs
    assert med9 == pytest.approx(1.01)
    assert hi9 - lo9 < hi - lo


def test_identical_pairs_give_a_zero_width_interval():
    assert bootstrap_ratio([2.0] * 5, [1.0] * 5) == (2.0, 2.0, 2.0)
    assert half_width(2.0, 2.0, 2.0) == 0.0


def test_one_pair_has_no_interval():
    med, lo, hi = bootstrap_ratio([3.0], [2.0])
    assert med == 1.5 and lo == float("-inf") and hi == float("inf")


@pytest.mark.parametrize("target, lo, hi, expected", [
    (">= 0.95", 0.96, 1.05, "met"),
    (">= 0.95", 0.90, 0.94, "not met"),
    (">= 0.95", 0.90, 1.00, "undecided"),
    ("<= 1.10", 0.90, 1.05, "met"),
    ("<= 1.10", 1.11, 1.20, "not met"),
    ("<= 1.10", 1.00, 1.20, "undecided"),
])
def test_verdict_reads_the_whole_interval(target, lo, hi, expected):
    assert verdict(target, lo, hi) == expected


def test_a_reported_figure_has_its_interval_and_no_verdict():
    r = paired_result("x", "samples/s", 2.0, 1.0, "samples/s", [2.0, 2.2, 1.8], [1.0, 1.0, 1.0],
                      "(reported)")
    assert (r.ratio, r.verdict, r.met) == (2.0, None, None)
    assert r.ci[0] <= 2.0 <= r.ci[1]


def test_interleave_until_stops_once_the_interval_is_tight():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1

    scale = Scale.make(quick=True)
    times = interleave_until({"a": a, "b": b}, "a", "b", scale, min_pairs=3, warmup=0)
    assert len(times["a"]) == len(times["b"]) == calls["a"] == calls["b"]
    assert 3 <= len(times["a"]) <= scale.max_pairs


def test_show_prints_a_saved_run_as_a_markdown_table(tmp_path, capsys):
    from benchmarks.__main__ import main

    r = Result("reclassify", "samples/s icl / bare", 90.0, 100.0, "samples/s", 0.9,
               ">= 0.95", None, {"pairs": 12}, verdict="not met", ci=(0.85, 0.93))
    doc = {"machine": {"cores": 2}, "threads": 1, "repeats": 5, "started": "then",
           "seconds": 60.0, "load_average_1_5_15": [[0.5, 0.5, 0.5]],
           "results": [r.to_dict()]}
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(doc))
    assert main(["--show", str(saved), "--markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1] == "|" + " --- |" * 10
    assert lines[2] == ("| reclassify | samples/s icl / bare | 90 | 100 | samples/s | "
                        "0.9 [0.85, 0.93] | 12 | - | >= 0.95 | not met |")
    assert "started then, 60.0 s" in out


def test_quick_leaves_out_only_scale_unless_only_names_it():
    from benchmarks.__main__ import ALL, GPU_PASS, chosen

    assert chosen(False, False, None) == list(ALL)
    assert chosen(False, True, None) == [n for n in ALL if n != "scale"]
    assert chosen(False, True, "scale, memory") == ["scale", "memory"]
    assert chosen(True, True, "scale") == list(GPU_PASS)
