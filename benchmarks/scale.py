"""Scaling out on one machine (issue 12), through the command line as a user runs it:

- reclassify: ``torchrun --standalone --nproc-per-node N -m icl_cli reclassify --round 1``
  (N gloo ranks x 1 thread) against ``icl reclassify --round 1`` (1 process x 1 thread);
  goal >= 1.7x samples/s with N = 2 on this 2-core machine;
- synthesis: N ``icl synthesize --round 1 --part i/N`` processes at once against one whole
  ``icl synthesize --round 1``; goal >= 1.8x with N = 2.

Each timed call is a fresh process (start-up included on both sides: it is what a user
pays); calls alternate (1 then N, N then 1) and pairs are added until the speed-up's 95 %
interval is tight (``common.interleave_until``). A workspace with round 1 synthesised is
made first; every timed call redoes the round with ``--force``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Result, Scale, child_env, interleave_until, median, paired_result

ICL = [sys.executable, "-m", "icl_cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _sizes(scale: Scale) -> dict[str, str]:
    # Synthesis parts are whole blocks of 256 samples (icl_cli.steps.synthesize.BLOCK): the
    # counts give 2, 3 and 5 blocks (10 classes), which 2 parts split as evenly as blocks can.
    if scale.smoke:
        return {"arch": "tiny", "train": "100", "epochs": "1", "count": "26", "steps": "5"}
    if scale.quick:
        return {"arch": "mnist-cnn", "train": "1000", "epochs": "1", "count": "52",
                "steps": "20"}
    return {"arch": "mnist-cnn", "train": "4000", "epochs": "2", "count": "103",
            "steps": "40"}


def _workspace(root: Path, s: dict[str, str], env: dict[str, str]) -> Path:
    ws = root / "ws"
    common = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
    subprocess.run([*ICL, "init", "-w", str(ws), "-e", "icl", "--method", "icl", "--arch",
                    s["arch"], "--train-size", s["train"], "--val-size", "100",
                    "--init-epochs", "1", "--epochs", s["epochs"], "--count", s["count"],
                    "--max-steps", s["steps"], *common], check=True, capture_output=True,
                   env=env)
    subprocess.run([*ICL, "synthesize", "-w", str(ws), "--round", "1", *common], check=True,
                   capture_output=True, env=env)
    return ws


def _call(*commands: list[str], env: dict[str, str]):
    """A variant: the commands started together, waited for together."""
    def run() -> None:
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=env) for c in commands]
        for p, c in zip(procs, commands, strict=True):
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(c)} failed ({p.returncode}): "
                                   f"{err.decode()[-500:]}")
    return run


def run(scale: Scale, ranks: int = 2) -> list[Result]:
    env = child_env()
    root = Path(tempfile.mkdtemp(prefix="icl-bench-scale-"))
    s = _sizes(scale)
    pairs = 1 if scale.smoke else 2 if scale.quick else 3  # each call is a fresh start-up
    try:
        ws = _workspace(root, s, env)
        common = ["-w", str(ws), "--no-mlflow", "--threads", "1", "--device", "cpu"]
        samples = (int(s["train"]) + 10 * int(s["count"])) * int(s["epochs"])
        one = [*ICL, "reclassify", "--round", "1", "--force", *common]
        many = [*TORCHRUN, "--nproc-per-node", str(ranks), "-m", "icl_cli", "reclassify",
                "--round", "1", "--force", *common]
        t = interleave_until({"n": _call(many, env=env), "1": _call(one, env=env)},
                             "1", "n", scale, min_pairs=pairs)
        out = [paired_result(
            f"reclassify {ranks} ranks", "samples/s, fresh processes", samples / median(t["n"]),
            samples / median(t["1"]), "samples/s", t["1"], t["n"], f">= {0.85 * ranks:g}",
            details={"samples": samples, "seconds_ranks": t["n"], "seconds_one": t["1"],
                     "command": " ".join(many[2:])})]
        whole = [*ICL, "synthesize", "--round", "1", "--force", *common]
        parts = [[*ICL, "synthesize", "--round", "1", "--part", f"{i}/{ranks}", "--force",
                  *common] for i in range(1, ranks + 1)]
        drawn = 10 * int(s["count"])
        t = interleave_until({"n": _call(*parts, env=env), "1": _call(whole, env=env)},
                             "1", "n", scale, min_pairs=pairs)
        out.append(paired_result(
            f"synthesis {ranks} parts", "samples/s, fresh processes", drawn / median(t["n"]),
            drawn / median(t["1"]), "samples/s", t["1"], t["n"], f">= {0.9 * ranks:g}",
            details={"samples": drawn, "seconds_parts": t["n"], "seconds_whole": t["1"]}))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
