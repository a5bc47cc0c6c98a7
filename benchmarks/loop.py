"""A shell loop of single-step calls against one ``icl run``: the same rounds of the main
job's ICL experiment, from the same C_0, both as fresh processes.

The loop is what a user writes, one fresh process per step, doing per round what ``icl
run`` does (synthesize, reclassify, evaluate without the reliability diagram, and the
samples' grid); its calls are run and timed one by one, so each command's cost a call is
printed too:

    for t in 1 2 3 4 5; do
      icl synthesize --round $t; icl reclassify --round $t
      icl evaluate --round $t --no-plot; icl inspect --round $t
    done

against ``icl run --rounds 5`` (which also draws the error curve once at the end), each on
its own copy of one workspace holding C_0 (made first, not timed; ``--no-mlflow``, one
torch thread, as the main job runs). Pairs alternate (loop, run / run, loop, ...). The
ratio is loop seconds / run seconds (target: at most 1.15 on the CPU), and the difference
is said in what it is made of: the calls the loop makes beyond ``icl run``'s one, each
paying a process's start-up; the seconds inside the synthesize and reclassify steps (as
the catalog logs them) are the same work in both and are printed to show it. Both must
end with the same weights at the last round (the same computation), or the pair is
refused.

Sizes: full, the main job's experiment (``recipes/quickstart.sh``: mnist-cnn, 500 embedded
MNIST images, 1,000 held out, C_0 30 epochs, rounds of 4 mixed and 1 real-only epoch, 20
pseudo-negatives a class in at most 200 steps), 5 rounds; ``--quick``: 5 rounds of a
smaller experiment (200 images, 200 held out, C_0 5 epochs, 2 + 1 epochs a round, 10
pseudo-negatives a class in at most 50 steps), so rounds are shorter and the per-call
cost weighs more than at full size; ``--smoke``: the tiny net, 1 round.

    python -m benchmarks.loop [--quick | --smoke] [--pairs N] [--json]
"""

from __future__ import annotations

import resource
import shutil
import sqlite3
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

TARGET = 1.15
RUNTIME = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
EXPERIMENT = "icl"
COMMON = ["--dataset", "mnist-embedded", "--mode", "softmax", "--batch-size", "64", "--lr",
          "0.01", "--pn-weight", "1", "--sampler-lr", "0.01", "--reference-std", "0.3",
          "--stop-rule", "logit"]
SIZES = {  # (rounds, icl init flags)
    "full": (5, ["--arch", "mnist-cnn", "--train-size", "500", "--val-size", "1000",
                 "--init-epochs", "30", "--epochs", "4", "--real-epochs", "1",
                 "--count", "20", "--max-steps", "200", *COMMON]),
    "quick": (5, ["--arch", "mnist-cnn", "--train-size", "200", "--val-size", "200",
                  "--init-epochs", "5", "--epochs", "2", "--real-epochs", "1",
                  "--count", "10", "--max-steps", "50", *COMMON]),
    "smoke": (1, ["--arch", "tiny", "--train-size", "100", "--val-size", "50",
                  "--init-epochs", "1", "--epochs", "1", "--real-epochs", "0",
                  "--count", "2", "--max-steps", "3", "--sampler-lr", "0.05"]),
}
ICL = [sys.executable, "-m", "icl_cli"]
STEPS_PER_ROUND = 4  # synthesize, reclassify, evaluate, inspect


def round_calls(ws: Path, t: int | str) -> list[list[str]]:
    """The loop's calls of round ``t``: one fresh ``icl`` process per step."""
    where = ["-e", EXPERIMENT, "-w", str(ws)]
    return [[*ICL, "synthesize", "--round", str(t), *where, *RUNTIME],
            [*ICL, "reclassify", "--round", str(t), *where, *RUNTIME],
            [*ICL, "evaluate", "--round", str(t), "--no-plot", *where, *RUNTIME],
            [*ICL, "inspect", "--round", str(t), *where]]


def loop_script(ws: Path, rounds: int) -> str:
    """The shell loop as a user would write it: the calls ``run`` times one by one."""
    body = "".join(f"  {' '.join(c)}\n" for c in round_calls(ws, "$t"))
    return f"set -e\nfor t in $(seq 1 {rounds}); do\n{body}done\n"


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU seconds of the process and its children) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {done.returncode}: "
                           f"{done.stderr.strip().splitlines()[-3:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def in_steps(ws: Path) -> float:
    """Seconds the catalog logged inside the synthesize and reclassify steps of rounds >=
    1 (the work; evaluation and the grid log no step of their own)."""
    with sqlite3.connect(f"file:{ws / '.icl' / 'catalog.db'}?mode=ro", uri=True) as db:
        (s,) = db.execute("select coalesce(sum(seconds), 0) from steps where state = 'ok' "
                          "and round >= 1 and name in ('synthesize', 'reclassify')").fetchone()
    return float(s)


def same_weights(a: Path, b: Path, rounds: int) -> bool:
    """Whether workspaces ``a`` and ``b`` end with the same network weights at round
    ``rounds`` (the checkpoints' bytes differ: each keeps its epochs' timings)."""
    import torch

    def weights(ws: Path) -> dict:
        with sqlite3.connect(f"file:{ws / '.icl' / 'catalog.db'}?mode=ro", uri=True) as db:
            row = db.execute("select path from checkpoints where round = ? order by id desc "
                             "limit 1", (rounds,)).fetchone()
        if row is None:
            return {}
        path = Path(row[0]) if Path(row[0]).is_absolute() else ws / row[0]
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    wa, wb = weights(a), weights(b)
    return bool(wa) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def run(size: str = "quick", pairs: int = 1) -> list[Result]:
    """The loop against ``icl run`` at ``size`` (full, quick, smoke), ``pairs`` pairs."""
    rounds, init = SIZES[size]
    env = child_env()
    root = Path(tempfile.mkdtemp(prefix="icl-bench-loop-"))
    try:
        c0 = root / "c0"
        subprocess.run([*ICL, "init", "-w", str(c0), "-e", EXPERIMENT, *init, *RUNTIME],
                       check=True, capture_output=True, env=env)
        times: dict[str, list[float]] = {"loop": [], "run": []}
        cpu: dict[str, list[float]] = {"loop": [], "run": []}
        work: dict[str, list[float]] = {"loop": [], "run": []}
        per_call: dict[str, list[tuple[float, float]]] = {}  # command: [(wall, CPU)]
        for r in range(pairs):
            for name in ("loop", "run") if r % 2 == 0 else ("run", "loop"):
                ws = root / name
                shutil.rmtree(ws, ignore_errors=True)
                shutil.copytree(c0, ws, symlinks=True)
                if name == "loop":
                    calls = [_timed(c, env) + (c[3],) for t in range(1, rounds + 1)
                             for c in round_calls(ws, t)]
                    for w, c, command in calls:
                        per_call.setdefault(command, []).append((w, c))
                    wall, c = sum(x[0] for x in calls), sum(x[1] for x in calls)
                else:
                    wall, c = _timed([*ICL, "run", "-w", str(ws), "-e", EXPERIMENT,
                                      "--rounds", str(rounds), *RUNTIME], env)
                times[name].append(wall)
                cpu[name].append(c)
                work[name].append(in_steps(ws))
            if not same_weights(root / "loop", root / "run", rounds):
                raise RuntimeError(f"the loop and icl run ended with other weights at round "
                                   f"{rounds}: not the same computation")
        return [result(size, rounds, times, cpu, work, per_call)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def result(size: str, rounds: int, times: dict[str, list[float]],
           cpu: dict[str, list[float]], work: dict[str, list[float]],
           per_call: dict[str, list[tuple[float, float]]] | None = None) -> Result:
    """loop / run with the difference split into calls x per-call cost, and each
    command's median wall and CPU seconds a call (``per_call``)."""
    per_call = per_call or {}
    loop_s, run_s = median(times["loop"]), median(times["run"])
    calls = STEPS_PER_ROUND * rounds
    extra = loop_s - run_s
    res = paired_result(
        f"shell loop / icl run ({rounds} rounds)", "s of the loop / s of icl run", loop_s,
        run_s, "s", times["loop"], times["run"], f"<= {TARGET}",
        details={"size": size, "rounds": rounds, "calls": calls,
                 "loop_seconds": times["loop"], "run_seconds": times["run"],
                 "loop_cpu_seconds": cpu["loop"], "run_cpu_seconds": cpu["run"],
                 "ratio_cpu_time": median(cpu["loop"]) / median(cpu["run"]),
                 "in_steps_seconds": work,
                 "extra_seconds": extra, "extra_per_call_seconds": extra / (calls - 1),
                 "extra_cpu_per_call_seconds": (median(cpu["loop"]) - median(cpu["run"]))
                 / (calls - 1),
                 "per_call_seconds": {k: median([w for w, _ in v])
                                      for k, v in per_call.items()},
                 "per_call_cpu_seconds": {k: median([c for _, c in v])
                                          for k, v in per_call.items()},
                 "load_average": load_average()})
    res.details["basis"] = (
        f"{size} size, {rounds} rounds: the loop's {calls} calls took {loop_s:.1f} s, icl "
        f"run {run_s:.1f} s; {extra:+.1f} s = {calls - 1} more processes x "
        f"{extra / (calls - 1):+.2f} s each (CPU {res.details['extra_cpu_per_call_seconds']:+.2f}"
        f" s each); inside the synthesize and reclassify steps: loop "
        f"{median(work['loop']):.1f} s, run {median(work['run']):.1f} s; a call, median "
        "wall / CPU s: " + ", ".join(
            f"{k} {res.details['per_call_seconds'][k]:.1f} / "
            f"{res.details['per_call_cpu_seconds'][k]:.1f}" for k in per_call))
    if len(times["loop"]) < 2:  # one pair: no interval, the verdict from the ratio
        res.ci = None
        res.met = res.ratio <= TARGET
        res.verdict = "met" if res.met else "not met"
        res.target = f"<= {TARGET} (1 pair)"
    return res


def main(argv: list[str] | None = None) -> None:
    p = command_line("python -m benchmarks.loop", __doc__)
    p.add_argument("--quick", action="store_true", help="the smaller experiment")
    p.add_argument("--smoke", action="store_true", help="the tiny net, 1 round")
    p.add_argument("--pairs", type=int, default=None, help="pairs (default 1 quick, 3 full)")
    a = started(p.parse_args(argv))
    size = "smoke" if a.smoke else "quick" if a.quick else "full"
    (r,) = run(size, a.pairs or (3 if size == "full" else 1))
    if a.json:
        print_json(r)
        return
    print(f"{r.name}: {r.ratio:.3f}{'' if r.ci is None else f' {list(r.ci)}'} (target "
          f"{r.target}: {r.verdict}); CPU-time ratio {r.details['ratio_cpu_time']:.3f}\n"
          f"{r.details['basis']}\nload average {load_average()}")


if __name__ == "__main__":
    main()
