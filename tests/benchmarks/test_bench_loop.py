"""benchmarks/loop.py: a shell loop of single-step calls against one ``icl run``, at smoke
size (the tiny net, one round, one pair: six fresh processes, ``slow``); the benchmark
refuses a pair whose two ends differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import loop


def test_the_loop_does_per_round_what_icl_run_does():
    script = loop.loop_script(Path("/ws"), 3)
    assert script.startswith("set -e\n") and "seq 1 3" in script
    calls = [ln.split()[3] for ln in script.splitlines() if "icl_cli" in ln]
    assert calls == ["synthesize", "reclassify", "evaluate", "inspect"]
    assert len(calls) == loop.STEPS_PER_ROUND
    assert "--no-plot" in script and script.count("--no-mlflow") == 3


@pytest.mark.slow
def test_loop_runs_at_smoke_size():
    (r,) = loop.run("smoke", 1)
    assert r.details["calls"] == loop.STEPS_PER_ROUND * loop.SIZES["smoke"][0]
    assert r.ratio > 0 and r.verdict in ("met", "not met") and r.ci is None
    assert "more processes" in r.details["basis"]
    assert all(w > 0 for w in r.details["in_steps_seconds"]["run"])
    assert set(r.details["per_call_seconds"]) == {"synthesize", "reclassify", "evaluate",
                                                  "inspect"}
