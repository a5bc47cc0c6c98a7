"""Peak RSS of a multi-round MNIST softmax run (L = 200 per class) and its growth per round.

A child process runs the real steps in ONE process, as ``icl run`` does (C_0 through
``icl init``, then per round ``synthesize_round``, ``train_round``, ``evaluate_round``),
resets the kernel's peak-RSS counter before each step (``/proc/self/clear_refs``) and
reads each step's peak (``VmHWM``) and the RSS left after it (``VmRSS``). To fit in
minutes it shortens what does not set the memory: a small training subset, 1 epoch per
round, 2 sampler steps. The synthesis batch (K x L inputs) and the pool's growth (K x L
samples a round) are full size: L = 200 in the full run, 100 with ``--quick``.

Projection to 30 rounds on full MNIST (60,000 images, 938 batches): synthesis does not
grow with the round; reclassification holds the pool (P_t x 3,136 bytes, built from the
shards, so twice that while it is assembled) and batches of 64 real + P_t / 938
pseudo-negatives (64 at round 30). The shortened run's batches are larger than that (its
few real batches share the whole pool), so its reclassify peak is an upper bound for the
batch part; the projection adds the pool's growth twice, the larger real set once, and the
RSS left behind per round (a leak would show there) times the remaining rounds.
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
    import torch

    from icl_cli.steps.common import Runtime
    from icl_cli.steps.evaluate import evaluate_round
    from icl_cli.steps.synthesize import synthesize_round
    from icl_cli.steps.train import train_round
    from store import Store

    torch.set_num_threads(threads)
    store = Store.open(workspace)
    runtime = Runtime(device="cpu", threads=threads, mlflow=False)
    rows = [{"round": 0, "step": "start", "peak_mib": _mib("VmHWM"), "rss_mib": _mib("VmRSS")}]
    for t in range(1, rounds + 1):
        for name, step in (("synthesize", synthesize_round), ("reclassify", train_round),
                           ("evaluate", evaluate_round)):
            _reset_peak()
            step(store, None, t, runtime)
            if trim:
                _malloc_trim()
            rows.append({"round": t, "step": name, "peak_mib": _mib("VmHWM"),
                         "rss_mib": _mib("VmRSS")})
    steps = [{"name": s.name, "round": s.round, "seconds": s.seconds} for s in store.steps()]
    overhead = []
    for s in store.steps(name="reclassify"):
        info = store.checkpoint(s.experiment, s.round)
        loop = sum(h["seconds"] for h in store.load_checkpoint(info).get("history", []))
        overhead.append({"round": s.round, "step_s": s.seconds, "loop_s": loop,
                         "outside_loop_s": None if s.seconds is None else s.seconds - loop})
    store.close()
    return {"rows": rows, "steps": steps, "reclassify_step_vs_loop": overhead}


def run(rounds: int, train_size: int, threads: int, max_steps: int = 2, count: int = 200,
        mmap_threshold: int | None = None, trim: bool = False) -> Result:
    """``mmap_threshold``: run the steps with glibc's mmap threshold fixed at this many bytes
    (``MALLOC_MMAP_THRESHOLD_``), which stops the heap from keeping freed tensors.
    ``trim``: call glibc's ``malloc_trim(0)`` after each step instead."""
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
             str(max_steps), "--no-mlflow", "--threads", str(threads), "--device", "cpu"],
            check=True, capture_output=True, env=env)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--child", str(ws), "--rounds",
             str(rounds), "--threads", str(threads), *(["--trim"] if trim else [])],
            check=True, capture_output=True, text=True, env=env)
        report = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    rows = report["rows"]
    peak = max(r["peak_mib"] for r in rows)
    synth = max(r["peak_mib"] for r in rows if r["step"] == "synthesize")
    reclass_last = [r for r in rows if r["step"] == "reclassify"][-1]["peak_mib"]
    after = [r["rss_mib"] for r in rows if r["step"] == "evaluate"]
    left_per_round = (after[-1] - after[0]) / (len(after) - 1) if len(after) > 1 else 0.0
    pool_mib = K * count * SAMPLE_BYTES / 2**20
    later = 30 - rounds
    reclass_30 = reclass_last + 2 * later * pool_mib + FULL_MNIST_EXTRA_BYTES / 2**20
    projected = max(synth, reclass_30) + later * max(left_per_round, 0.0)
    return Result(
        "memory", "projected peak RSS, 30 rounds full MNIST (MiB)", projected, peak, "MiB",
        projected / 1024, "< 2 GiB", projected < 2048,
        {"rounds_run": rounds, "count_per_class": count, "train_size": train_size,
         "malloc_mmap_threshold": mmap_threshold, "malloc_trim_after_steps": trim,
         "max_steps": max_steps, "measured_peak_mib": peak, "synthesis_peak_mib": synth,
         "reclassify_peak_last_round_mib": reclass_last,
         "projected_reclassify_peak_round30_mib": reclass_30,
         "rss_left_per_round_mib": left_per_round, "pool_growth_mib_per_round": pool_mib,
         "per_step": rows, "steps": report["steps"],
         "reclassify_step_vs_loop": report["reclassify_step_vs_loop"]},
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trim", action="store_true")
    a = p.parse_args()
    print(json.dumps(child(a.child, a.rounds, a.threads, a.trim)))
