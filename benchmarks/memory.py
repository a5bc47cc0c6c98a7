"""Peak RSS of a multi-round MNIST softmax run (L = 200 per class) and its growth per round.

A child process runs ``icl run``'s own loop (``run_rounds``, one round per call, in ONE
process; C_0 through ``icl init``), resets the kernel's peak-RSS counter before each round
(``/proc/self/clear_refs``) and reads each round's peak (``VmHWM``) and the RSS left after
it (``VmRSS``); lines fitted through both give the growth per round. To fit in
minutes it shortens what does not set the memory: a small training subset, 1 epoch per
round, 2 sampler steps. The synthesis batch (K x L inputs) and the pool's growth (K x L
samples a round) are full size: L = 200 in the full run, 100 with ``--quick``.

Projection to 30 rounds on full MNIST: the fitted peak line, plus what the shortened run
leaves out: the pool's growth at L = 200 instead of ``count`` (twice: it is held twice
while assembled) and the larger real set. ``basis`` in the result says it in numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Result, proc_status_kib

K, SAMPLE_BYTES = 10, 28 * 28 * 4  # classes, one float32 image
FULL_MNIST_EXTRA_BYTES = (60_000 + 10_000 - 6_000 - 2_000) * 28 * 28  # uint8, vs embedded


def _mib(field: str) -> float:
    return (proc_status_kib(field) or 0) / 1024


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS (glibc); what ``--malloc-trim`` tests."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(workspace: Path, rounds: int, threads: int, trim: bool = False) -> dict:
    """Rounds 1..``rounds`` through ``run_rounds``, one call per round, in this one process:
    exactly what ``icl run`` does (grids, per-round memory release included)."""
    import torch

    from icl_cli.steps.common import Runtime
    from icl_cli.steps.run import run_rounds
    from store import Store

    torch.set_num_threads(threads)
    store = Store.open(workspace)
    runtime = Runtime(device="cpu", threads=threads, mlflow=False)
    rows = [{"round": 0, "peak_mib": _mib("VmHWM"), "rss_mib": _mib("VmRSS")}]
    for t in range(1, rounds + 1):
        _reset_peak()
        run_rounds(store, "mem", t, runtime)
        if trim:
            _malloc_trim()
        rows.append({"round": t, "peak_mib": _mib("VmHWM"), "rss_mib": _mib("VmRSS")})
    steps = [{"name": s.name, "round": s.round, "seconds": s.seconds} for s in store.steps()]
    store.close()
    return {"rows": rows, "steps": steps}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (xs, ys)."""
    import numpy as np

    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


# Full MNIST at round 30 and L = 200 holds as many pseudo-negatives as real images (60,000
# each), so a batch is 64 real + 64 pseudo-negatives. A 500-image run's batches instead gain
# K x count / 8 pseudo-negatives a round (125 at L = 100), whose activations the fitted
# slope would carry into the projection although full MNIST never has them. --max-batch 128
# runs such a batch as at most 128 rows at once: the shape of full MNIST's batches.
FULL_MNIST_ROWS = 128


def run(rounds: int, train_size: int, threads: int, max_steps: int = 2, count: int = 200,
        mmap_threshold: int | None = None, trim: bool = False,
        target_rounds: int = 30, max_batch: int = FULL_MNIST_ROWS) -> Result:
    """``mmap_threshold``: run the steps with glibc's mmap threshold fixed at this many bytes
    (``MALLOC_MMAP_THRESHOLD_``), which stops the heap from keeping freed tensors.
    ``trim``: call glibc's ``malloc_trim(0)`` after each round as well (``icl run``
    already does). ``max_batch``: the experiment's ``--max-batch`` (see FULL_MNIST_ROWS)."""
    ws = Path(tempfile.mkdtemp(prefix="icl-bench-mem-"))
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    try:
        icl = shutil.which("icl")
        init = [icl] if icl else [sys.executable, "-m", "icl_cli"]
        subprocess.run(
            [*init, "init", "-w", str(ws), "-e", "mem", "--train-size", str(train_size),
             "--init-epochs", "1", "--epochs", "1", "--count", str(count), "--max-steps",
             str(max_steps), "--max-batch", str(max_batch), "--no-mlflow", "--threads",
             str(threads), "--device", "cpu"],
            check=True, capture_output=True, env=env)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--child", str(ws), "--rounds",
             str(rounds), "--threads", str(threads), *(["--trim"] if trim else [])],
            check=True, capture_output=True, text=True, env=env)
        report = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    rows = [r for r in report["rows"] if r["round"] >= 1]
    peak = max(r["peak_mib"] for r in rows)
    # Round 1 pays one-off costs (first imports of h5py, matplotlib, the first pool): the
    # lines are fitted from round 2 on when that leaves two rounds or more.
    fitted = [r for r in rows if r["round"] >= 2] if len(rows) >= 3 else rows
    xs = [r["round"] for r in fitted]
    b_peak, a_peak = (fit_line(xs, [r["peak_mib"] for r in fitted]) if len(fitted) > 1
                      else (peak, 0.0))
    b_left, a_left = (fit_line(xs, [r["rss_mib"] for r in fitted]) if len(fitted) > 1
                      else (fitted[-1]["rss_mib"], 0.0))
    # The shortened run differs from full MNIST at L = 200 in two known ways: the pool grows
    # by K x count samples a round (held twice while the pool is assembled), not K x 200,
    # and the real set is larger. Both are added. The fitted slope carries everything else
    # (a leak included), but never less than the pool's own growth: over a few rounds the
    # noise of the peaks can hide it, and a flat or falling line must not project less.
    pool_mib = K * count * SAMPLE_BYTES / 2**20
    missing_pool = 2 * K * max(200 - count, 0) * SAMPLE_BYTES / 2**20
    slope = max(a_peak, 2 * pool_mib) + missing_pool
    projected = b_peak + slope * target_rounds + FULL_MNIST_EXTRA_BYTES / 2**20
    basis = (f"measured peak RSS {peak:.0f} MiB over rounds 1-{rounds} of `icl run` "
             f"(train {train_size}, L {count}, --max-batch {max_batch}: no more rows at "
             f"once than full MNIST's 64 real + 64 pseudo-negatives); lines through rounds "
             f"{xs[0]}-{xs[-1]}: peak {b_peak:.0f} + {a_peak:.1f} MiB/round, RSS left after "
             f"a round grows {a_left:.1f} MiB/round; projection to round {target_rounds} on "
             f"full MNIST at L 200 = {b_peak:.0f} + {target_rounds} x (max(fitted slope, the "
             f"pool's own {2 * pool_mib:.1f}) + {missing_pool:.1f} for the larger pool) + "
             f"{FULL_MNIST_EXTRA_BYTES / 2**20:.0f} MiB of extra real images "
             f"= {projected:.0f} MiB")
    return Result(
        "memory", f"projected peak RSS, {target_rounds} rounds full MNIST (MiB)", projected,
        peak, "MiB", projected / 1024, "< 2 GiB", projected < 2048,
        {"rounds_run": rounds, "count_per_class": count, "train_size": train_size,
         "max_batch": max_batch,
         "malloc_mmap_threshold": mmap_threshold, "malloc_trim_after_rounds": trim,
         "max_steps": max_steps, "measured_peak_mib": peak,
         "fitted_rounds": xs,
         "peak_fit_mib": {"intercept": b_peak, "per_round": a_peak},
         "rss_after_round_fit_mib": {"intercept": b_left, "per_round": a_left},
         "pool_growth_mib_per_round": pool_mib, "basis": basis,
         "per_round": report["rows"], "steps": report["steps"]},
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trim", action="store_true")
    a = p.parse_args()
    print(json.dumps(child(a.child, a.rounds, a.threads, a.trim)))
