"""``icl run -e A -e B --executor slurm``: several experiments as one Slurm job array.

submitit (an optional extra, ``pip install 'icl-toolkit[cluster]'``) submits one task per
experiment, each the same ``icl run -e NAME ...`` command that ``--parallel`` starts as a
local child, and waits for them; ``--executor local`` runs the very same path through
submitit's local executor (subprocesses on this machine), which is how the tests check it.
The workspace must be on storage every node sees; with more than one machine, use a
PostgreSQL catalog (``ICL_CATALOG_URL``), whose advisory locks hold across machines.

submitit keeps its job files and each task's logs in ``<ws>/.icl/submitit/``. Those files
are pickles that submitit itself writes and reads back on the node (its protocol); icl
never loads a pickle from anywhere else.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from icl_cli.cli.lanes import Lane
from icl_cli.errors import StepError

EXECUTORS = ("local", "slurm")
FOLDER = "submitit"  # under the workspace's .icl/


def run_command(argv: list[str]) -> tuple[int, str, list[str]]:
    """What a task runs: ``argv`` to its end; (exit code, stdout, stderr lines). Runs on
    the node, so it never raises for a failing command: the exit code comes back."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr.splitlines()


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["slurm_partition=gpu", "timeout_min=240"]`` -> {"slurm_partition": "gpu",
    "timeout_min": 240} (whole numbers become ints)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StepError(f"--executor-param takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value
    return out


def executor(kind: str, folder: Path, parallel: int, params: dict[str, Any]):
    """A submitit AutoExecutor for ``kind`` with ``params``; an unknown parameter is a
    one-line StepError naming it."""
    if kind not in EXECUTORS:
        raise StepError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    try:
        import submitit
    except ImportError:
        raise StepError("--executor needs submitit: pip install 'icl-toolkit[cluster]' "
                        "(or pip install submitit)") from None
    ex = submitit.AutoExecutor(folder=folder, cluster=kind)  # logs: <job id>_<task>_log.*
    try:
        ex.update_parameters(**{"slurm_array_parallelism": parallel, **params})
    except (ValueError, TypeError, NameError) as exc:  # NameError: an unknown key
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StepError(f"--executor-param: {first}") from None
    return ex


def run_lanes(lanes: list[Lane], kind: str, workspace: Path, parallel: int,
              params: dict[str, Any], console=None) -> list[Lane]:
    """Submit one task per lane (one job array), wait for all, and fill each lane's exit
    code, stdout and stderr as ``lanes.Board`` does for local children. Ctrl-C (or
    SIGTERM) cancels the tasks still queued or running."""
    folder = Path(workspace) / ".icl" / FOLDER
    ex = executor(kind, folder, parallel, params)
    with ex.batch():
        jobs = [ex.submit(run_command, lane.argv) for lane in lanes]
    if console is not None:
        ids = ", ".join(str(j.job_id) for j in jobs)
        console.print(f"submitted {len(jobs)} task(s) to {kind} ({ids}); logs in {folder}",
                      highlight=False)
    try:
        for lane, job in zip(lanes, jobs, strict=True):
            lane.state = "running"
            try:
                lane.code, lane.stdout, lane.stderr = job.result()
            except Exception as exc:  # the task itself died (killed, timed out, no node)
                first = str(exc).strip().splitlines()
                lane.code, lane.stderr = 1, [f"error: task {job.job_id}: "
                                             f"{first[-1] if first else type(exc).__name__}"]
            lane.state = "done" if lane.code == 0 else "failed"
    except BaseException:
        for job in jobs:
            job.cancel(check=False)
        raise
    return lanes
