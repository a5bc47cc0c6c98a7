"""Timing helpers shared by the benchmarks: interleaved repeats, medians, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
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

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None, device: str = "cpu") -> Scale:
        if quick:
            return cls(True, repeats or 5, 2, repeats or 9, 20, 2, 20, 30, 1, 10, 1024, 2, 500,
                       100, device)
        return cls(False, repeats or 5, 2, repeats or 21, 200, 1, 200, 150, 1, 50, 2048, 3,
                   1000, 200, device)


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
