"""The store and the command line's start-up: writing a shard, the step log, ``icl --help``
and the read-only commands.

``Store.write_shard`` writes a 2,000-sample shard (1 x 28 x 28, reference-noise-like values,
as synthesis produces) to a temporary name, fsyncs, renames, hashes it and records it in
the catalog: under 0.5 s, with all 2,000 samples recorded (``python -m benchmarks --only
store``; a timing, so not among the tests, where a loaded machine would make it flaky).

``icl --help`` runs in a fresh process (median of 5), beside ``python -c pass`` for the
interpreter's own start-up on this machine. ``icl status``, ``icl report``
and ``icl verify`` run in a fresh process each on a three-experiment workspace (baseline,
ICL-noise, ICL; a tiny net, 2 rounds): each under 0.5 s (verify: plus the time to hash the
workspace's files), and none may import SQLAlchemy (a SQLite catalog is read with the
standard library's sqlite3), torch, MLflow, h5py or matplotlib. Each is reported with its
CPU seconds (the steadier figure on a loaded machine), the interpreter's bare start-up
measured between its runs, and the load average at the time.

    python -m benchmarks.startup [WORKSPACE]   # the read-only commands and --help
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Result, child_env, median


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
        times, counts = [], []
        for r in range(repeats):
            arrays = shard_arrays(n, seed=r)
            t0 = time.perf_counter()
            info = store.write_shard("bench", 1, arrays, {
                "seed": r, "sampler_config": {"count": n // 10},
                "source_checkpoint": "0" * 64})
            times.append(time.perf_counter() - t0)
            counts.append(info.count)  # what the catalog recorded: every sample
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
    whole = all(c == n for c in counts)
    return [
        Result("store write_shard", "seconds (write, fsync, rename, hash, record)", t, None,
               "s", t, f"< 0.5 s, {n} recorded", t < 0.5 and whole,
               {"samples": n, "recorded": counts, "file_bytes": size, "seconds": times}),
        Result("step log seconds", "seconds the catalog logged for a 0.05 s step", seconds,
               0.05, "s", seconds, "logged", shows, {}),
    ]


CHILD_ENV = child_env()


def _spawn(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=CHILD_ENV)
        times.append(time.perf_counter() - t0)
    return times


def run_help(repeats: int = 5) -> Result:
    icl = shutil.which("icl")
    cmd = [icl, "--help"] if icl else [sys.executable, "-m", "icl_cli", "--help"]
    help_t, bare_t = [], []
    _spawn(cmd, 1)  # a first run, not counted: it writes the bytecode a user's runs reuse
    for _ in range(repeats):  # interleaved with the interpreter's bare start-up
        help_t += _spawn(cmd, 1)
        bare_t += _spawn([sys.executable, "-c", "pass"], 1)
    t = median(help_t)
    return Result("icl --help", "seconds", t, median(bare_t), "s", t, "< 0.5 s", t < 0.5,
                  {"command": " ".join(cmd), "seconds": help_t,
                   "python_c_pass_seconds": bare_t})


READ_ONLY = (["status"], ["report"], ["verify"])
# A read-only command imports none of them (matplotlib: only to redraw report's plot).
HEAVY = ("sqlalchemy", "torch", "mlflow", "h5py", "matplotlib")


def three_experiments(root: Path) -> Path:
    """A workspace as the main job leaves it, small: baseline, ICL-noise and ICL paired on
    a tiny net, 2 rounds each (about a minute on one core)."""
    ws = root / "ws"
    tiny = ["--arch", "tiny", "--train-size", "200", "--val-size", "100", "--init-epochs",
            "1", "--epochs", "1", "--count", "4", "--max-steps", "10", "--no-mlflow",
            "--threads", "1", "--device", "cpu"]
    icl = [sys.executable, "-m", "icl_cli"]
    subprocess.run([*icl, "init", "-w", str(ws), "-e", "baseline", "--method", "baseline",
                    *tiny], capture_output=True, check=True)
    for m in ("icl-noise", "icl"):
        subprocess.run([*icl, "init", "-w", str(ws), "-e", m, "--method", m, "--from",
                        "baseline:0", "--no-mlflow", "--threads", "1", "--device", "cpu"],
                       capture_output=True, check=True)
    subprocess.run([*icl, "run", "-w", str(ws), "-e", "baseline", "-e", "icl-noise", "-e",
                    "icl", "--rounds", "2", "--no-mlflow", "--threads", "1", "--device", "cpu"],
                   capture_output=True, check=True)
    return ws


def _spawn_cpu(cmd: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system) of ``repeats`` fresh runs of ``cmd``.
    On a loaded machine the CPU time is the steadier figure: wall time counts the wait for
    a core."""
    import resource

    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=CHILD_ENV)
        wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def imported(cmd: list[str]) -> set[str]:
    """Top-level modules a fresh ``python CMD...`` imports (``-X importtime``); ``cmd`` is
    the interpreter's arguments, e.g. ``["-m", "icl_cli", "status"]``."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True,
                         text=True)
    if res.returncode != 0:  # a command that failed early says nothing of what it imports
        tail = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:")]
        raise RuntimeError(f"python {' '.join(cmd)} exited {res.returncode}: {tail[-1:]}")
    return {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def run_read_only(repeats: int = 5, ws: Path | None = None) -> list[Result]:
    """Seconds of ``icl status``, ``icl report``, ``icl verify`` (each median of
    ``repeats`` fresh processes) on a three-experiment workspace; target < 0.5 s each
    (verify: plus the time to hash the workspace's files, measured here too)."""
    import hashlib

    tmp = Path(tempfile.mkdtemp(prefix="icl-bench-ro-"))
    try:
        ws = ws or three_experiments(tmp)
        files = [p for p in (ws / "experiments").rglob("*") if p.suffix in (".h5", ".pt")]
        t0 = time.perf_counter()
        for p in files:
            hashlib.sha256(p.read_bytes()).hexdigest()
        hashing = time.perf_counter() - t0
        out = []
        for argv in READ_ONLY:
            cmd = [sys.executable, "-m", "icl_cli", *argv, "-w", str(ws)]
            times, cpu, bare = [], [], []
            _spawn(cmd, 1)  # not counted: bytecode written, and report draws its plot
            for _ in range(repeats):  # interleaved with the interpreter's bare start-up
                wall, used = _spawn_cpu(cmd, 1)
                times += wall
                cpu += used
                bare += _spawn([sys.executable, "-c", "pass"], 1)
            heavy = sorted(imported(cmd[1:]) & set(HEAVY))  # cmd without the interpreter
            t = median(times)
            limit = 0.5 + (hashing if argv[0] == "verify" else 0.0)
            out.append(Result(f"icl {argv[0]}", "seconds (fresh process, 3 experiments)", t,
                              median(bare), "s", t, f"< {limit:.2f} s, no {'/'.join(HEAVY)}",
                              t < limit and not heavy,
                              {"command": " ".join(cmd), "seconds": times,
                               "cpu_seconds": cpu, "python_c_pass_seconds": bare,
                               "heavy_imports": heavy, "hash_seconds": hashing,
                               "files": len(files), "load_average": _load()}))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS does not say)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str]) -> None:
    """``python -m benchmarks.startup [WORKSPACE]``: an existing workspace, or a new one."""
    print(f"load average {_load()}")
    results = [run_help(), *run_read_only(ws=Path(argv[0]) if argv else None)]
    for r in results:
        d = r.details
        extra = f" imports {', '.join(d['heavy_imports'])}" if d.get("heavy_imports") else ""
        runs = ", ".join(f"{x:.2f}" for x in d["seconds"])
        cpu = f", CPU {median(d['cpu_seconds']):.3f} s" if d.get("cpu_seconds") else ""
        bare = f", python -c pass {r.bare:.3f} s" if r.bare else ""
        print(f"{r.name:12} {r.icl:.3f} s (median; runs {runs}{cpu}{bare})  target "
              f"{r.target}: {'met' if r.met else 'NOT met'}{extra}")


if __name__ == "__main__":
    main(sys.argv[1:])
