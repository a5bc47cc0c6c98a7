"""benchmarks/fixed_cost.py: a step with work marks the moment its work starts
(``$ICL_MARK_WORK_START``), after its data and checkpoint and before MLflow, which it
still logs to once the result is recorded; the benchmark reads the mark and pairs it with
``import torch`` (smoke size: the tiny net, one pair, seconds of a loaded machine's
minute)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import fixed_cost
from benchmarks.fixed_cost import Call, _run, result
from tests.kit import COMMON, ROOT, TINY, child_env, icl

ENTRY = Path(__file__).with_name("mark_entry.py")
RUNTIME = ["--threads", "1", "--device", "cpu"]  # MLflow on, as by default


def _lines(stderr: str, tag: str) -> list[list[str]]:
    return [json.loads(ln.split(":", 1)[1]) for ln in stderr.splitlines()
            if ln.startswith(tag + ":")]


def test_steps_mark_their_work_before_mlflow_and_log_to_it_after(tmp_path):
    ws = tmp_path / "ws"
    icl("init", "-e", "a", *TINY, *COMMON, "-w", ws)
    for argv in (["synthesize", "--round", "1"], ["reclassify", "--round", "1"]):
        mark = tmp_path / f"{argv[0]}.mark"
        done = subprocess.run([sys.executable, str(ENTRY), *argv, "-e", "a", *RUNTIME,
                               "-w", str(ws)], cwd=ROOT, capture_output=True, text=True,
                              env=child_env(ICL_MARK_WORK_START=str(mark)))
        assert done.returncode == 0, done.stderr
        (at_work,) = _lines(done.stderr, "ICL-AT-WORK")  # one mark: the work started once
        assert "torch" in at_work and "mlflow" not in at_work, argv
        assert "mlflow" in _lines(done.stderr, "ICL-IMPORTED")[-1], argv  # logged after
        what, wall, cpu = mark.read_text().split()
        assert what == argv[0] and float(wall) > 0 and float(cpu) > 0


def test_the_mark_is_read_and_paired_with_import_torch(tmp_path):
    mark = tmp_path / "m"
    writes = [sys.executable, "-c", "import os, time; open(os.environ['ICL_MARK_WORK_START'],"
              " 'w').write(f'x {time.time()} {time.process_time()}')"]
    call = _run(writes, child_env(), mark)
    assert 0 < call.to_work <= call.wall and call.to_work_cpu > 0
    assert _run([sys.executable, "-c", "pass"], child_env()).to_work is None
    with pytest.raises(RuntimeError, match="exited 3"):
        _run([sys.executable, "-c", "raise SystemExit(3)"], child_env())
    calls = {"icl": [Call(1.2, 1.0, 3.0, 2.5), Call(1.4, 1.1, 3.0, 2.5)],
             "torch": [Call(0.9, 0.8, 1.0, 0.9), Call(0.9, 0.8, 1.0, 0.9)],
             "mlflow": [Call(1.3, 1.0, 5.0, 4.0), Call(1.3, 1.0, 5.0, 4.0)]}
    r = result("synthesize", calls)
    assert r.ratio == pytest.approx(1.3) and r.verdict == "met"  # read from the median
    assert r.details["mlflow_adds_seconds"] == pytest.approx(2.0)
    assert r.details["ratio_to_torch_imported"] == pytest.approx(1.3 / 0.9)


def test_fixed_cost_runs_at_smoke_size():
    (r,) = fixed_cost.run(pairs=1, smoke=True, steps=("synthesize",), mlflow=False)
    assert r.name == "fixed cost synthesize" and r.icl > 0 and r.bare > 0
    assert r.verdict in ("met", "not met") and r.details["pairs"] == 1
