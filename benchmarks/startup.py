"""The store and the command line's start-up: writing a shard, the step log, ``icl --help``.

``Store.write_shard`` writes a 2,000-sample shard (1 x 28 x 28, reference-noise-like values,
as synthesis produces) to a temporary name, fsyncs, renames, hashes it and records it in
the catalog. ``icl --help`` runs in a fresh process (median of 5), beside ``python -c
pass`` for the interpreter's own start-up on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Result, median


def shard_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"samples": (0.3 * rng.standard_normal((n, 1, 28, 28))).astype(np.float32),
            "target": np.repeat(np.arange(10), n // 10).astype(np.int64),
            "steps": rng.integers(0, 30, n).astype(np.int32),
            "logit": rng.standard_normal(n).astype(np.float32),
            "passed": rng.random(n) < 0.9}


def run_store(repeats: int, n: int = 2000) -> list[Result]:
    from store import Store

    root = Path(tempfile.mkdtemp(prefix="icl-bench-"))
    try:
        store = Store.init(root)
        store.create_experiment("bench", {"seed": 0})
        times = []
        for r in range(repeats):
            arrays = shard_arrays(n, seed=r)
            t0 = time.perf_counter()
            info = store.write_shard("bench", 1, arrays, {
                "seed": r, "sampler_config": {"count": n // 10},
                "source_checkpoint": "0" * 64})
            times.append(time.perf_counter() - t0)
        size = info.path.stat().st_size
        with store.step("bench", "bench-step", 1, {"what": "sleep 0.05 s"}):
            time.sleep(0.05)
        logged = store.steps("bench", name="bench-step")
        seconds = logged[-1].seconds if logged else None
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t = median(times)
    shows = seconds is not None and 0.05 <= seconds < 1
    return [
        Result("store write_shard", "seconds (write, fsync, rename, hash, record)", t, None,
               "s", t, "< 0.5 s", t < 0.5,
               {"samples": n, "file_bytes": size, "seconds": times}),
        Result("step log seconds", "seconds the catalog logged for a 0.05 s step", seconds,
               0.05, "s", seconds, "logged", shows, {}),
    ]


def _spawn(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def run_help(repeats: int = 5) -> Result:
    icl = shutil.which("icl")
    cmd = [icl, "--help"] if icl else [sys.executable, "-m", "icl_cli", "--help"]
    help_t, bare_t = [], []
    for _ in range(repeats):  # interleaved with the interpreter's bare start-up
        help_t += _spawn(cmd, 1)
        bare_t += _spawn([sys.executable, "-c", "pass"], 1)
    t = median(help_t)
    return Result("icl --help", "seconds", t, median(bare_t), "s", t, "< 0.5 s", t < 0.5,
                  {"command": " ".join(cmd), "seconds": help_t,
                   "python_c_pass_seconds": bare_t})
