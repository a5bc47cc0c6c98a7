"""benchmarks/finished.py at smoke size: a finished ``icl synthesize`` answers in a fresh
process without torch, h5py or MLflow (one pair, on a workspace made in this process)."""

from __future__ import annotations

from benchmarks import finished
from tests.kit import icl


def test_finished_runs_at_smoke_size(tmp_path):
    ws = tmp_path / "ws"
    icl("init", "-e", "a", *finished.TINY, *finished.RUNTIME, "-w", ws)
    for t in (1, 2):
        for step in ("synthesize", "reclassify"):
            icl(step, "--round", t, *finished.RUNTIME, "-w", ws)
    (r,) = finished.run(1, ws, steps=("synthesize",))
    assert r.name == "icl synthesize (finished)" and r.details["heavy_imports"] == []
    assert r.icl > 0 and r.details["pairs"] == 1
