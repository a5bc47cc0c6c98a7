"""Scaling out on one machine (issue 12), through the command line as a user runs it:

- reclassify: ``torchrun --standalone --nproc-per-node N -m icl_cli reclassify --round 1``
  (N gloo ranks x 1 thread) against ``icl reclassify --round 1`` (1 process x 1 thread);
  goal >= 1.7x samples/s with N = 2 on this 2-core machine;
- synthesis: N ``icl synthesize --round 1 --part i/N`` processes at once against one whole
  ``icl synthesize --round 1``; goal >= 1.8x with N = 2.

Each timed call is a fresh process; calls alternate (1 then N, N then 1) and pairs are
added until the speed-up's 95 % interval is tight (``common.interleave_until``). A
workspace with round 1 synthesised is made first; every timed call redoes the round with
``--force``. Every call gives two figures:

- **in the step**: samples/s from the seconds the step itself reports (``--json``: the
  training epochs, the sampler's draw; for N processes the slowest one). This is the rate
  that scales with the work, and the one the goals are read from.
- **fresh processes**: wall seconds of the whole command, start-up included (``import
  torch``, torchrun's own launcher, opening the catalog, loading the checkpoint): what one
  call costs a user. Start-up is a fixed cost per call, so this ratio rises towards the
  first with the size of the round.

One more line bounds what any N processes can do on this machine: N independent
``icl reclassify`` processes at once, each with 1/N of the work (its own experiment with
1/N of the training set, the pool and the batch), against one with all of it: nothing is
communicated, so their speed-up is the machine's own ceiling for the DDP line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Result, Scale, child_env, interleave_until, median, paired_result

ICL = [sys.executable, "-m", "icl_cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _sizes(scale: Scale) -> dict[str, str]:
    # Synthesis parts are whole blocks of 256 samples (icl_cli.steps.draw.BLOCK),
    # every N-th one to a part: the full size is the paper's L = 200 per class (8 blocks).
    if scale.smoke:
        return {"arch": "tiny", "train": "100", "epochs": "1", "count": "26", "steps": "5"}
    if scale.quick:
        return {"arch": "mnist-cnn", "train": "1000", "epochs": "1", "count": "52",
                "steps": "20"}
    return {"arch": "mnist-cnn", "train": "4000", "epochs": "2", "count": "200",
            "steps": "40"}


def _workspace(root: Path, s: dict[str, str], env: dict[str, str], ranks: int) -> Path:
    """Experiment ``icl`` at the benchmark's size, and ``half-1`` .. ``half-N`` with 1/N of
    its training set, pool and batch (the ceiling's processes), each with round 1 drawn."""
    ws = root / "ws"
    common = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
    settings = ["--method", "icl", "--arch", s["arch"], "--val-size", "100",
                "--init-epochs", "1", "--epochs", s["epochs"], "--max-steps", s["steps"]]
    experiments = {"icl": ["--train-size", s["train"], "--count", s["count"]]}
    for i in range(1, ranks + 1):
        experiments[f"half-{i}"] = [
            "--train-size", str(int(s["train"]) // ranks), "--count",
            str(int(s["count"]) // ranks), "--batch-size", str(64 // ranks)]
    for name, own in experiments.items():
        subprocess.run([*ICL, "init", "-w", str(ws), "-e", name, *settings, *own, *common],
                       check=True, capture_output=True, env=env)
        subprocess.run([*ICL, "synthesize", "-w", str(ws), "-e", name, "--round", "1",
                        *common], check=True, capture_output=True, env=env)
    return ws


class _Call:
    """A variant: the commands started together, waited for together; ``seconds`` gets,
    for every call, the largest ``seconds`` the commands' JSON documents report (the step's
    own time)."""

    def __init__(self, *commands: list[str], env: dict[str, str]) -> None:
        self.commands, self.env, self.seconds = commands, env, []

    def __call__(self) -> None:
        procs = [subprocess.Popen([*c, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=self.env)
                 for c in self.commands]
        inner = []
        for p, c in zip(procs, self.commands, strict=True):
            out, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(c)} failed ({p.returncode}): "
                                   f"{err.decode()[-500:]}")
            inner.append(float(json.loads(out)["seconds"]))
        self.seconds.append(max(inner))

    def counted(self, n: int) -> list[float]:
        """The step seconds of the last ``n`` calls (the timed ones, after the warm-up)."""
        return self.seconds[len(self.seconds) - n:]


def _pair(name: str, what: str, samples: int, num: list[float], den: list[float],
          target: str, details: dict) -> Result:
    """A speed-up line: ``samples`` per call at ``den`` (N processes) against ``num``
    (one) seconds."""
    return paired_result(f"{name} ({what})", "samples/s", samples / median(den),
                         samples / median(num), "samples/s", num, den, target,
                         details={"samples": samples, "seconds_n": den, "seconds_1": num,
                                  **details})


def run(scale: Scale, ranks: int = 2) -> list[Result]:
    env = child_env()
    root = Path(tempfile.mkdtemp(prefix="icl-bench-scale-"))
    s = _sizes(scale)
    pairs = 1 if scale.smoke else 2 if scale.quick else 3  # each call is a fresh start-up
    try:
        ws = _workspace(root, s, env, ranks)
        common = ["-w", str(ws), "--no-mlflow", "--threads", "1", "--device", "cpu"]
        drawn = 10 * int(s["count"])
        samples = (int(s["train"]) + drawn) * int(s["epochs"])
        redo = ["--round", "1", "--force", *common]
        main = ["-e", "icl", *redo]
        one = _Call([*ICL, "reclassify", *main], env=env)
        many = _Call([*TORCHRUN, "--nproc-per-node", str(ranks), "-m", "icl_cli",
                      "reclassify", *main], env=env)
        halves = _Call(*([*ICL, "reclassify", "-e", f"half-{i}", *redo]
                         for i in range(1, ranks + 1)), env=env)
        t = interleave_until({"n": many, "1": one, "half": halves}, "1", "n", scale,
                             min_pairs=pairs)
        k = len(t["1"])
        command = " ".join(many.commands[0][2:])
        goal, none = f">= {0.85 * ranks:g}", "(reported)"
        out = [
            _pair(f"reclassify {ranks} ranks", "in the step", samples, one.counted(k),
                  many.counted(k), goal, {"command": command}),
            _pair(f"reclassify {ranks} ranks", "fresh processes", samples, t["1"], t["n"],
                  none, {"command": command}),
            _pair(f"{ranks} independent processes, 1/{ranks} each", "ceiling, in the step",
                  samples, one.counted(k), halves.counted(k), none,
                  {"what": f"{ranks} icl reclassify at once, each with 1/{ranks} of the "
                           "training set, pool and batch: no communication"}),
        ]
        whole = _Call([*ICL, "synthesize", *main], env=env)
        parts = _Call(*([*ICL, "synthesize", "--part", f"{i}/{ranks}", *main]
                        for i in range(1, ranks + 1)), env=env)
        t = interleave_until({"n": parts, "1": whole}, "1", "n", scale, min_pairs=pairs)
        k = len(t["1"])
        out += [
            _pair(f"synthesis {ranks} parts", "in the step", drawn, whole.counted(k),
                  parts.counted(k), f">= {0.9 * ranks:g}", {}),
            _pair(f"synthesis {ranks} parts", "fresh processes", drawn, t["1"], t["n"],
                  none, {}),
        ]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
