"""A finished step's second call (``icl_cli.finished``): the wall time of a fresh ``icl
synthesize``, ``reclassify``, ``evaluate``, ``inspect``, ``attack``, ``ood`` and
``quality`` that answers from the catalog, each paired with a fresh ``python -c "import
torch"`` (what the same call cost before: it imported torch first). Pairs alternate (A B,
B A, ...), so a drift in the machine's load falls on both; each command reports its median
seconds, the median of the per-pair ratios with a 95 % bootstrap interval, its CPU seconds
(the steadier figure on a loaded machine), ``python -c pass`` for the interpreter's own
start-up, and the load average. Target: under 0.5 s on a warm file cache, and none of
torch, h5py, MLflow imported (checked with ``-X importtime``).

    python -m benchmarks.finished [--repeats N] [--json] [WORKSPACE]

WORKSPACE: one whose experiment ``a`` has rounds 1 and 2 (made here otherwise: a tiny net
on 200 images, about a minute on one core).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
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
from benchmarks.startup import imported

RUNTIME = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
TINY = ["--arch", "tiny", "--train-size", "200", "--val-size", "100", "--init-epochs", "1",
        "--epochs", "1", "--count", "4", "--max-steps", "10", "--sampler-lr", "0.05"]
CALLS = {  # the second call of each command, as a shell loop would repeat it
    "synthesize": ["synthesize", "--round", "2", *RUNTIME],
    "reclassify": ["reclassify", "--round", "2", *RUNTIME],
    "evaluate": ["evaluate", "--round", "2", *RUNTIME],
    "inspect": ["inspect", "--round", "2"],
    "attack": ["attack", "--round", "2", "--against", "a:1", *RUNTIME],
    "ood": ["ood", "--round", "2", "--limit", "200", *RUNTIME],
    "quality": ["quality", "--epochs", "1", *RUNTIME],
}
HEAVY = ("torch", "h5py", "mlflow")
CHILD_ENV = child_env()
ICL = [sys.executable, "-m", "icl_cli"]


def make_workspace(root: Path, names: tuple[str, ...] = tuple(CALLS)) -> Path:
    """Experiment ``a``, rounds 1 and 2, and the first (working) call of the commands
    ``names``."""
    ws = root / "ws"
    steps = [["init", "-e", "a", *TINY, *RUNTIME]]
    steps += [[c, "--round", str(t), *RUNTIME] for t in (1, 2)
              for c in ("synthesize", "reclassify")]
    for argv in [*steps, *(CALLS[n] for n in names)]:
        subprocess.run([*ICL, *argv, "-w", str(ws)], capture_output=True, check=True,
                       env=CHILD_ENV)
    return ws


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, env=CHILD_ENV)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def run(repeats: int = 7, ws: Path | None = None, steps: tuple[str, ...] | None = None
        ) -> list[Result]:
    """Each command of ``steps`` (default: all of ``CALLS``), ``repeats`` pairs; ``ws``: a
    workspace where their first calls ran (made here otherwise)."""
    names = tuple(steps or CALLS)
    tmp = Path(tempfile.mkdtemp(prefix="icl-bench-finished-"))
    try:
        ws = ws or make_workspace(tmp, names)
        torch_cmd = [sys.executable, "-c", "import torch"]
        out = []
        for name in names:
            argv = CALLS[name]
            cmd = [*ICL, *argv, "-w", str(ws)]
            _timed(cmd)  # not counted: the file cache warmed, bytecode written
            heavy = sorted(imported(cmd[1:]) & set(HEAVY))
            walls, cpus, torch_walls, bare = [], [], [], []
            for r in range(repeats):
                pair = [("icl", cmd), ("torch", torch_cmd)]
                for who, c in pair if r % 2 == 0 else pair[::-1]:
                    wall, cpu = _timed(c)
                    if who == "icl":
                        walls.append(wall)
                        cpus.append(cpu)
                    else:
                        torch_walls.append(wall)
                bare.append(_timed([sys.executable, "-c", "pass"])[0])
            t = median(walls)
            res = paired_result(
                f"icl {name} (finished)", "seconds / python -c 'import torch' seconds", t,
                median(torch_walls), "s", walls, torch_walls, "(reported)",
                details={"command": " ".join(argv), "seconds": walls, "cpu_seconds": cpus,
                         "import_torch_seconds": torch_walls, "python_c_pass_seconds": bare,
                         "heavy_imports": heavy, "load_average": load_average()})
            res.target, res.met = "< 0.5 s, no torch/h5py/mlflow", t < 0.5 and not heavy
            res.verdict = "met" if res.met else "not met"
            out.append(res)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = command_line("python -m benchmarks.finished", __doc__)
    p.add_argument("workspace", nargs="?", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=7, help="pairs per command (default 7)")
    a = started(p.parse_args(argv))
    results = run(a.repeats, a.workspace)
    if a.json:
        print_json(results)
        return
    for r in results:
        d = r.details
        lo, hi = r.ci
        extra = f"; imports {', '.join(d['heavy_imports'])}" if d["heavy_imports"] else ""
        print(f"{r.name:26} {r.icl:.3f} s median (CPU {median(d['cpu_seconds']):.3f} s; "
              f"import torch {r.bare:.3f} s; python -c pass "
              f"{median(d['python_c_pass_seconds']):.3f} s); ratio {r.ratio:.3f} "
              f"[{lo:.3f}, {hi:.3f}]; target {r.target}: {r.verdict}{extra}")
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
