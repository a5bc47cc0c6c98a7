"""A step's fixed cost: how long a fresh ``icl synthesize``, ``icl reclassify`` and ``icl
evaluate`` that have work to do take from the process's start to the moment their work
starts (imports, workspace, catalog, checkpoint, data), against a fresh ``python -c "import
torch"``: the part no command can avoid. Target: at most 1.3x, read from the median of the
paired ratios (the interval is printed beside it).

The moment the work starts is the line a step writes to ``$ICL_MARK_WORK_START``
(``icl_cli.steps.common.mark_work_start``): right before the sampler's first step, the
training loop's first batch, or evaluation's first forward pass, after everything those
load. Each call runs on a fresh copy of a workspace where that step is still to do (the
copy is not timed), paired with a fresh ``python -c "import torch"``; the order flips
every pair. Each call is also timed with MLflow on (the workspace's own ``mlflow.db``,
made when the workspace was): its time to the work (MLflow logs after the result is in the
catalog, so it adds nothing there) and its whole wall time, whose difference from the
``--no-mlflow`` call is what MLflow adds per call.

Sizes: the main job's experiment (mnist-cnn, 500 embedded MNIST images, 1,000 held out;
``recipes/quickstart.sh``) with a C_0 of one epoch (the cost before the work does not
depend on how well C_0 is trained), each call's work cut short (``--max-steps 2``,
``--epochs 1 --real-epochs 0``; evaluation runs whole); ``--smoke``: the tiny net on 100
images.

    python -m benchmarks.fixed_cost [--pairs N] [--smoke] [--json]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    Result,
    child_env,
    command_line,
    load_average,
    median,
    paired_result,
    print_json,
    started,
)

TARGET = 1.3
MARK_ENV = "ICL_MARK_WORK_START"  # icl_cli.steps.common.WORK_START_ENV
RUNTIME = ["--threads", "1", "--device", "cpu"]
MAIN_JOB = ["--dataset", "mnist-embedded", "--train-size", "500", "--val-size", "1000",
            "--arch", "mnist-cnn", "--mode", "softmax", "--init-epochs", "1", "--epochs", "4",
            "--real-epochs", "1", "--batch-size", "64", "--lr", "0.01", "--pn-weight", "1",
            "--count", "20", "--max-steps", "200", "--sampler-lr", "0.01",
            "--reference-std", "0.3", "--stop-rule", "logit"]
SMOKE = ["--arch", "tiny", "--train-size", "100", "--val-size", "50", "--init-epochs", "1",
         "--epochs", "1", "--count", "2", "--max-steps", "3", "--sampler-lr", "0.05"]
# Each step's call, on a workspace where it has work: (template, arguments).
CALLS = {
    "synthesize": ("c0", ["synthesize", "--round", "1", "--max-steps", "2"]),
    "reclassify": ("shard1", ["reclassify", "--round", "1", "--epochs", "1",
                              "--real-epochs", "0"]),
    "evaluate": ("trained1", ["evaluate", "--round", "1"]),
}
ICL = [sys.executable, "-m", "icl_cli"]
# The reference: a bare interpreter importing torch, whose whole wall time is the figure
# the target is about; it also marks when torch is imported (the stricter reference:
# ``os`` and ``time`` are loaded by then anyway), as a step marks its work.
TORCH = [sys.executable, "-c", "import torch, os, time; open(os.environ['" + MARK_ENV
         + "'], 'w').write(f'torch {time.time()} {time.process_time()}')"]


@dataclass(frozen=True)
class Call:
    """One timed process: seconds from its start to its work (wall and CPU; None: it never
    marked), and its whole wall and CPU seconds."""

    to_work: float | None
    to_work_cpu: float | None
    wall: float
    cpu: float


def _run(cmd: list[str], env: dict[str, str], mark: Path | None = None) -> Call:
    """Run ``cmd`` in a fresh process; with ``mark``, read when its work started."""
    if mark is not None:
        mark.unlink(missing_ok=True)
        env = {**env, MARK_ENV: str(mark)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, p0 = time.time(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - p0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {done.returncode}: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if mark is None or not mark.is_file():
        return Call(None, None, wall, cpu)
    _, at, at_cpu = mark.read_text().split()[:3]  # the first mark: where the work began
    return Call(float(at) - t0, float(at_cpu), wall, cpu)


def make_templates(root: Path, smoke: bool, env: dict[str, str], mlflow: bool = True,
                   upto: str = "trained1") -> dict[str, Path]:
    """Copies of one experiment ``icl``: after ``icl init`` (c0: round 1 to synthesize),
    after round 1's synthesis (shard1: to reclassify), after its reclassification
    (trained1: to evaluate), up to ``upto``. ``mlflow``: on, as by default (the workspace
    has its ``mlflow.db`` and run)."""
    ws = root / "template"
    steps = {"c0": ["init", "-e", "icl", *(SMOKE if smoke else MAIN_JOB)],
             "shard1": ["synthesize", "--round", "1", "--max-steps", "2"],
             "trained1": ["reclassify", "--round", "1", "--epochs", "1",
                          "--real-epochs", "0"]}
    names = list(steps)
    out = {}
    for name in names[:names.index(upto) + 1]:
        argv = steps[name]
        subprocess.run([*ICL, *argv, *RUNTIME, *([] if mlflow else ["--no-mlflow"]),
                        "-w", str(ws)], check=True, capture_output=True, env=env)
        out[name] = root / name
        shutil.copytree(ws, out[name], symlinks=True)
    return out


def _fresh(template: Path, scratch: Path) -> Path:
    """A fresh copy of ``template`` (the step still to do), not timed."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(template, scratch, symlinks=True)
    return scratch


def measure(step: str, template: Path, scratch: Path, pairs: int, env: dict[str, str],
            mlflow: bool = True, warmup: bool = True) -> dict[str, list[Call]]:
    """``pairs`` rounds of (the call without MLflow, ``import torch``, the call with
    MLflow unless not ``mlflow``), the order flipped every round, after one of each not
    counted (``warmup``)."""
    _, argv = CALLS[step]
    mark = scratch.with_name(scratch.name + ".mark")

    def icl(mlflow: bool) -> Call:
        ws = _fresh(template, scratch)
        flags = [*RUNTIME, *([] if mlflow else ["--no-mlflow"])]
        return _run([*ICL, *argv, *flags, "-w", str(ws)], env, mark)

    variants = {"icl": lambda: icl(False), "torch": lambda: _run(TORCH, env, mark),
                "mlflow": lambda: icl(True)}
    if not mlflow:
        del variants["mlflow"]
    for fn in variants.values() if warmup else ():  # file cache and bytecode warmed
        fn()
    out: dict[str, list[Call]] = {k: [] for k in variants}
    for r in range(pairs):
        order = list(variants.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            out[name].append(fn())
    return out


def result(step: str, calls: dict[str, list[Call]]) -> Result:
    """The step's Result: median to-work seconds over ``import torch`` seconds (details:
    CPU seconds, the stricter ratio to torch imported, MLflow's share)."""
    icl, torch_, mlf = calls["icl"], calls["torch"], calls.get("mlflow") or calls["icl"]
    if any(c.to_work is None for c in icl + mlf + torch_):
        raise RuntimeError(f"icl {step} never marked the start of its work")
    to_work = [c.to_work for c in icl]
    torch_s = [c.wall for c in torch_]
    strict = [a / b.to_work for a, b in zip(to_work, torch_, strict=True)]
    res = paired_result(
        f"fixed cost {step}", "s to the work / s of python -c 'import torch'",
        median(to_work), median(torch_s), "s", to_work, torch_s, "(reported)",
        details={
            "command": "icl " + " ".join(CALLS[step][1]),
            "to_work_seconds": to_work, "import_torch_seconds": torch_s,
            "to_work_cpu_seconds": [c.to_work_cpu for c in icl],
            "import_torch_cpu_seconds": [c.cpu for c in torch_],
            "torch_imported_seconds": [c.to_work for c in torch_],
            "ratio_to_torch_imported": median(strict),
            "ratio_cpu_time": median([c.to_work_cpu for c in icl]) / median(
                [c.cpu for c in torch_]),
            "whole_seconds": [c.wall for c in icl],
            "mlflow_measured": "mlflow" in calls,
            "mlflow_to_work_seconds": [c.to_work for c in mlf],
            "mlflow_whole_seconds": [c.wall for c in mlf],
            "mlflow_adds_seconds": median([c.wall for c in mlf]) - median(
                [c.wall for c in icl]),
            "mlflow_adds_cpu_seconds": median([c.cpu for c in mlf]) - median(
                [c.cpu for c in icl]),
            "load_average": load_average()})
    res.target = f"<= {TARGET} (median)"
    res.met = res.ratio <= TARGET
    res.verdict = "met" if res.met else "not met"
    return res


def mlflow_result(results: list[Result]) -> Result:
    """What MLflow adds to a call's whole wall time, the median over the steps."""
    adds = [r.details["mlflow_adds_seconds"] for r in results]
    return Result("fixed cost: MLflow per call", "whole-call s with MLflow - without",
                  median(adds), None, "s", median(adds), "(reported, after the record)",
                  None, {"per_step": {r.name: r.details["mlflow_adds_seconds"]
                                      for r in results},
                         "cpu_per_step": {r.name: r.details["mlflow_adds_cpu_seconds"]
                                          for r in results}})


def run(pairs: int = 5, smoke: bool = False, steps: tuple[str, ...] = tuple(CALLS),
        mlflow: bool = True) -> list[Result]:
    """The Result of each of ``steps`` (``pairs`` pairs each), and MLflow's share per call
    (not measured without ``mlflow``: then the templates have no MLflow run either)."""
    env = child_env()
    root = Path(tempfile.mkdtemp(prefix="icl-bench-fixed-"))
    try:
        needed = max((CALLS[s][0] for s in steps), key=["c0", "shard1", "trained1"].index)
        templates = make_templates(root, smoke, env, mlflow, needed)
        out = []
        for step in steps:
            calls = measure(step, templates[CALLS[step][0]], root / "call", pairs, env,
                            mlflow, warmup=pairs > 1)
            out.append(result(step, calls))
        return [*out, mlflow_result(out)] if mlflow else out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = command_line("python -m benchmarks.fixed_cost", __doc__)
    p.add_argument("--pairs", type=int, default=7, help="pairs per step (default 7)")
    p.add_argument("--smoke", action="store_true", help="the tiny net on 100 images")
    a = started(p.parse_args(argv))
    results = run(a.pairs, a.smoke)
    if a.json:
        print_json(results)
        return
    for r in (r for r in results if "to_work_seconds" in r.details):
        d = r.details
        lo, hi = r.ci
        print(f"{r.name:24} to the work {r.icl:.2f} s (CPU "
              f"{median(d['to_work_cpu_seconds']):.2f} s), import torch {r.bare:.2f} s (CPU "
              f"{median(d['import_torch_cpu_seconds']):.2f} s): ratio {r.ratio:.3f} "
              f"[{lo:.3f}, {hi:.3f}], CPU-time ratio {d['ratio_cpu_time']:.3f}, to torch "
              f"imported ({median(d['torch_imported_seconds']):.2f} s) "
              f"{d['ratio_to_torch_imported']:.3f}; target "
              f"{r.target}: {r.verdict}; whole call {median(d['whole_seconds']):.2f} s, "
              f"MLflow adds {d['mlflow_adds_seconds']:+.2f} s "
              f"(to the work with MLflow {median(d['mlflow_to_work_seconds']):.2f} s)")
    print(f"load average {load_average()} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
