"""Timing helpers shared by the benchmarks: interleaved repeats, medians with bootstrap
intervals, a verdict read from the interval, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scale:
    """Problem sizes: ``quick`` (a few minutes on 2 CPU cores) or the full run."""

    quick: bool
    repeats: int
    reclassify_batches: int  # real batches of 64 per timed epoch (each joined by 64 pn)
    reclassify_repeats: int  # short epochs, many pairs: the ratio's spread shrinks
    synth_per_class: int  # L of the per-step synthesis benchmark (the target says 200)
    synth_steps: int  # sampler steps per timed synthesis
    early_per_class: int  # L of the realistic early-stop run
    c0_steps: int  # SGD steps that train the C_0 of the early-stop run
    ova_batches: int  # batches per timed one-vs-all training epoch
    ova_per_class: int  # L of the one-vs-all synthesis timing
    matmul_n: int
    memory_rounds: int
    memory_train_size: int
    memory_count: int  # L per class of the memory run (the target says 200)
    device: str = "cpu"

    smoke: bool = False  # seconds-sized problems: checks that a pass runs, no figures
    ci_half_width: float = 0.03  # paired benchmarks add pairs until the 95 % interval is
    max_pairs: int = 41  # ... this tight (relative half-width), or this many pairs,
    max_seconds: float = 60.0  # ... or this long per benchmark

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None, device: str = "cpu",
             smoke: bool = False) -> Scale:
        if smoke:
            return cls(True, repeats or 3, 1, repeats or 3, 2, 1, 2, 2, 1, 2, 64, 3, 100, 5,
                       device, smoke=True, max_pairs=repeats or 3, max_seconds=5.0)
        if quick:
            return cls(True, repeats or 5, 2, repeats or 9, 20, 2, 20, 30, 1, 10, 1024, 4, 500,
                       100, device)
        return cls(False, repeats or 5, 2, repeats or 21, 200, 1, 200, 150, 1, 50, 2048, 6,
                   1000, 200, device, max_seconds=240.0)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a timed ``icl`` process: a user's second run, which finds its
    bytecode cached (an environment that forbids writing it, as this machine's does, would
    have every run compile icl's modules again: ~0.09 s), MLflow's telemetry off, one
    thread, and ``extra``."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **extra}


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class Result:
    """One benchmark's outcome. ``ratio`` is the figure the target is about."""

    name: str
    metric: str  # what ``ratio`` means
    icl: float | None
    bare: float | None
    unit: str
    ratio: float | None
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None  # 'met', 'not met', 'undecided' (from ``ci`` when paired)
    ci: tuple[float, float] | None = None  # 95 % bootstrap interval of ``ratio``

    def __post_init__(self) -> None:
        if self.verdict is None and self.met is not None:
            self.verdict = "met" if self.met else "not met"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleave(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
               device: str = "cpu",
               cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds of each call, variants interleaved after ``warmup`` rounds: A B, B A, A B ...
    (the order flips every repeat, so a steady drift in the machine's load cancels).
    ``cpu``: filled with the process's CPU seconds of each call, which other processes
    competing for the cores disturb far less than wall time (with 1 torch thread)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    if cpu is not None:
        cpu.update({name: [] for name in variants})
    for r in range(repeats):
        order = list(variants.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu[name].append(time.process_time() - c0)
    return times


def interleave_until(variants: dict[str, Callable[[], Any]], num: str, den: str,
                     scale: Scale, min_pairs: int | None = None, warmup: int = 1,
                     cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """``interleave``, one pair at a time, until the bootstrap interval of the median
    ratio ``num / den`` is within ``scale.ci_half_width`` of it (relative), or
    ``scale.max_pairs`` pairs, or ``scale.max_seconds`` have passed (at least
    ``min_pairs``, default ``scale.reclassify_repeats`` capped by ``max_pairs``)."""
    low = min(min_pairs or scale.reclassify_repeats, scale.max_pairs)
    times = interleave(variants, low, warmup=warmup, device=scale.device, cpu=cpu)
    t0 = time.perf_counter()
    while len(times[num]) < scale.max_pairs and time.perf_counter() - t0 < scale.max_seconds:
        if half_width(*bootstrap_ratio(times[num], times[den])) <= scale.ci_half_width:
            break
        more_cpu: dict[str, list[float]] | None = {} if cpu is not None else None
        # Keep the A B / B A alternation going across calls.
        order = variants if len(times[num]) % 2 == 0 else dict(reversed(variants.items()))
        more = interleave(order, 1, warmup=0, device=scale.device, cpu=more_cpu)
        for k, v in more.items():
            times[k] += v
        if cpu is not None and more_cpu is not None:
            for k, v in more_cpu.items():
                cpu[k] += v
    return times


def bootstrap_ratio(num: list[float], den: list[float], n_boot: int = 4000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of the per-pair ratios num[i] / den[i] and a 95 %
    percentile-bootstrap interval for it (pairs resampled with replacement)."""
    import numpy as np

    r = np.asarray(num, dtype=float) / np.asarray(den, dtype=float)
    if len(r) < 2:
        return float(np.median(r)), float("-inf"), float("inf")
    rng = np.random.default_rng(seed)
    boots = np.median(r[rng.integers(0, len(r), size=(n_boot, len(r)))], axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(np.median(r)), float(lo), float(hi)


def half_width(med: float, lo: float, hi: float) -> float:
    """The interval's half-width relative to the median (inf when undefined)."""
    return (hi - lo) / 2 / abs(med) if med else float("inf")


def verdict(target: str, lo: float, hi: float) -> str:
    """'met', 'not met' or 'undecided' for a target such as '>= 0.95' or '<= 1.10', read
    from the interval [lo, hi]: met only when the whole interval meets it."""
    op, value = target.split()
    thr = float(value)
    if op == ">=":
        return "met" if lo >= thr else "not met" if hi < thr else "undecided"
    if op == "<=":
        return "met" if hi <= thr else "not met" if lo > thr else "undecided"
    raise ValueError(f"unknown target {target!r}")


def paired_result(name: str, metric: str, icl: float | None, bare: float | None, unit: str,
                  num: list[float], den: list[float], target: str, valid: bool = True,
                  details: dict[str, Any] | None = None) -> Result:
    """A Result whose ratio is the median of num[i] / den[i] with its bootstrap interval,
    and whose verdict is read from that interval (``valid`` False: results differ, not
    met whatever the timing; target ``"(reported)"``: a figure without a goal, no
    verdict)."""
    med, lo, hi = bootstrap_ratio(num, den)
    v = (None if target == "(reported)" else verdict(target, lo, hi)) if valid else "not met"
    return Result(name, metric, icl, bare, unit, med, target,
                  None if v in (None, "undecided") else v == "met",
                  {**(details or {}), "pairs": len(num), "ratio_ci95": [lo, hi],
                   "ci_half_width": half_width(med, lo, hi)}, verdict=v, ci=(lo, hi))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of num[i] / den[i] (pairs ran back to back)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def proc_status_kib(field_name: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def command_line(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark module's own command line: its docstring as the help, and ``--json``."""
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def started(args: argparse.Namespace) -> argparse.Namespace:
    """Say the load average on stderr as a benchmark starts (its figures depend on it)."""
    print(f"load average {load_average()}", file=sys.stderr)
    return args


def print_json(results: list[Result] | Result) -> None:
    """One JSON document: the result, or the list of them."""
    doc = results.to_dict() if isinstance(results, Result) else [r.to_dict() for r in results]
    print(json.dumps(doc, indent=2))
