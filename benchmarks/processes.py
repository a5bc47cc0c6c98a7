"""A whole step command in a fresh process on a round that is already done, beside
``python -c "import torch"``. ``synthesize``, ``reclassify`` and ``evaluate`` answer such a
call from the catalog without importing torch (``benchmarks.finished`` measures that path
with intervals, and ``benchmarks.fixed_cost`` the start-up of a step with work to do);
``icl run --rounds 1`` on a finished round still opens the workspace, imports torch and
checks each round before it finds nothing to do.

A tiny workspace (embedded MNIST subset, 100 training images, the ``tiny`` net, one round)
is made first; each command runs ``repeats`` times in a fresh process, median kept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result, child_env, median

STEPS = {
    "synthesize": ["synthesize", "--round", "1"],
    "reclassify": ["reclassify", "--round", "1"],
    "run": ["run", "--rounds", "1"],
    "evaluate": ["evaluate", "--round", "1"],
}


def _icl(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "icl_cli", *args, "-w", str(ws)]


def _time(cmd: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        out.append(time.perf_counter() - t0)
    return out


def run(repeats: int = 3) -> list[Result]:
    env = child_env()
    ws = Path(tempfile.mkdtemp(prefix="icl-bench-proc-"))
    common = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
    try:
        subprocess.run(_icl(ws, "init", "-e", "p", "--arch", "tiny", "--train-size", "100",
                            "--val-size", "0", "--init-epochs", "1", "--epochs", "1",
                            "--count", "2", "--max-steps", "2", *common),
                       check=True, capture_output=True, env=env)
        subprocess.run(_icl(ws, "run", "--rounds", "1", *common), check=True,
                       capture_output=True, env=env)
        torch_s = median(_time([sys.executable, "-c", "import torch"], repeats, env))
        results = []
        for name, args in STEPS.items():
            s = median(_time(_icl(ws, *args, *common), repeats, env))
            results.append(Result(
                f"start-up {name}", "s per call (round 1 done)", s, torch_s, "s",
                s / torch_s, "reported", None,
                {"command": "icl " + " ".join(args), "repeats": repeats,
                 "import_torch_s": torch_s, "over_import_torch_s": s - torch_s}))
        return results
    finally:
        shutil.rmtree(ws, ignore_errors=True)
