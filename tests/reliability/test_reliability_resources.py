"""Running out of a resource: a --count whose batch cannot fit in memory is refused up
front, and so is every count, size and repeat above a bound no real use reaches (rounds,
epochs, sampler steps, calibration bins, PGD steps and restarts, --limit, threads,
parallel processes); a full disk is one line, and the retry, once there is space,
finishes the job (MLflow included)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import icl_cli.config
from icl_cli.config import sampler_bytes
from tests.kit import COMMON, TINY, icl
from tests.reliability.relkit import (
    INIT,
    assert_unchanged,
    copy_ws,
    one_line,
    rows,
    run_child,
    snapshot,
)


def test_the_sampler_estimate_by_hand():
    # 20 samples of 3136 bytes (MNIST, float32), 18984 bytes of activations each, all in
    # one batch: 20 * (10 * 3136 + 1.5 * 18984) = 20 * 59836, plus the round's 4 copies
    # of its samples, 20 * 4 * 3136 = 250880
    assert sampler_bytes(20, 3136, 18984) == 1_196_720 + 250_880
    # In blocks of 8: the network works on 8 at a time, the round's copies stay whole.
    assert sampler_bytes(20, 3136, 18984, block=8) == 8 * 59836 + 250_880


def test_a_count_that_cannot_fit_is_refused_before_init_writes(tmp_path):
    ws = tmp_path / "ws"
    res = icl(*INIT[:-len(COMMON)], "--count", "1000000", *COMMON, "-w", ws, code=3)
    line = one_line(res)
    assert "--count 1000000 does not fit in memory: synthesis of 10000000 samples" in line
    assert "GiB is available (MemAvailable in /proc/meminfo); use a smaller --count" in line
    assert not ws.exists()


def test_a_count_that_cannot_fit_is_refused_before_run_works(templates, tmp_path,
                                                             monkeypatch):
    ws = templates.copy("round0", tmp_path / "ws")
    before = snapshot(ws)
    monkeypatch.setattr(icl_cli.config, "available_memory",
                        lambda device: (1 << 20, "test"))  # 1 MiB: 4 samples a class do not fit
    line = one_line(icl("run", "-w", ws, "--rounds", "1", *COMMON, code=3))
    assert line.startswith("error: --count 4 does not fit in memory: synthesis of 40 "
                           "samples takes about ")
    assert "and 0.0 GiB is available (test); use a smaller --count (at most about" in line
    after = snapshot(ws)
    assert after["files"] == before["files"] and after["catalog"] == before["catalog"]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root only; skipped elsewhere), unmounted at the end."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave_kib: int) -> Path:
    """A file that leaves about ``leave_kib`` KiB free on ``disk``."""
    import os

    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bfree * st.f_frsize - leave_kib * 1024))
    return filler


@pytest.mark.parametrize("leave_kib", [300, pytest.param(700, marks=pytest.mark.slow)])
def test_a_full_disk_during_init_is_one_line_and_the_retry_finishes(small_disk, logs,
                                                                     leave_kib):
    from mlflow.tracking import MlflowClient

    ws = small_disk / "ws"
    init = ["init", "-w", ws, "-e", "icl", "--method", "icl", *TINY, "--threads", "1",
            "--device", "cpu"]  # MLflow on
    filler = fill(small_disk, leave_kib)
    res = run_child(init, logs, code=None)
    assert res.code == 7, res  # no space left: its own exit code
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) <= 2, res.stderr
    assert lines[-1].startswith("error: no space left on the device"), lines
    assert all(w.startswith("warning: MLflow tracking at ") for w in lines[:-1])

    filler.unlink()
    again = run_child(init, logs)
    assert "warning" not in again.stderr, again.stderr  # mlflow.db is not stuck
    assert {s for _, s in rows(ws, "SELECT round, split FROM evaluations")} == {"test", "val"}
    run_child(["run", "-w", ws, "-e", "icl", "--rounds", "1", "--threads", "1",
               "--device", "cpu"], logs)
    run_id, = rows(ws, "SELECT mlflow_run_id FROM experiments")[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{ws}/.icl/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.params["sampler.count"] == "4"
    assert sorted(m.step for m in client.get_metric_history(run_id, "test_error")) == [0, 1]
    run_child(["verify", "-w", ws], logs)


def test_a_count_that_cannot_fit_is_refused_by_synthesize_too(templates, tmp_path,
                                                              monkeypatch):
    ws = templates.copy("round0", tmp_path / "ws")
    before = snapshot(ws)
    monkeypatch.setattr(icl_cli.config, "available_memory", lambda device: (1 << 20, "test"))
    line = one_line(icl("synthesize", "-w", ws, "--round", "1", *COMMON, code=3))
    assert line.startswith("error: --count 4 does not fit in memory: synthesis of 40 ")
    after = snapshot(ws)
    assert after["files"] == before["files"]


# Each: the command (on a workspace of 'base' and 'icl' at round 0), its flag, the bound.
TOO_MUCH = [
    (["evaluate", "-e", "icl", "--bins", "100000000"], "--bins", "1,000"),
    (["attack", "-e", "icl", "-r", "0", "--against", "base", "--method", "pgd", "--steps",
      "1000000000"], "--steps", "10,000"),
    (["attack", "-e", "icl", "-r", "0", "--against", "base", "--method", "pgd",
      "--restarts", "1000000"], "--restarts", "100"),
    (["attack", "-e", "icl", "-r", "0", "--against", "base", "--limit", "100000000"],
     "--limit", "10,000,000"),
    (["ood", "-e", "icl", "-r", "0", "--limit", "100000000"], "--limit", "10,000,000"),
    (["run", "-e", "icl", "--rounds", "100000"], "--rounds", "1,000"),
    (["run", "-e", "icl", "--rounds", "1", "--epochs", "100000"], "--epochs", "10,000"),
    (["reclassify", "-e", "base", "-r", "1", "--real-epochs", "100000"], "--real-epochs",
     "10,000"),
    (["init", "-e", "new", *TINY, "--init-epochs", "100000"], "--init-epochs", "10,000"),
    (["init", "-e", "new", *TINY, "--max-steps", "10000000"], "--max-steps", "100,000"),
    (["synthesize", "-e", "icl", "-r", "1", "--max-steps", "10000000"], "--max-steps",
     "100,000"),
    (["quality", "-e", "icl", "--epochs", "100000"], "--epochs", "10,000"),
]


@pytest.mark.parametrize("argv, flag, bound", TOO_MUCH,
                         ids=[f"{a[0]} {f}" for a, f, _ in TOO_MUCH])
def test_a_value_above_its_bound_is_refused_up_front(sqlite_pair, tmp_path, argv, flag,
                                                     bound):
    """One line naming the flag and its bound, exit 3, before any work (these ran for
    hours, or took 15 GB for --bins 1e8, before); the bound is in the option's help."""
    ws = copy_ws(sqlite_pair, tmp_path / "ws")
    before = snapshot(ws)
    line = one_line(icl(*argv, "-w", ws, *COMMON, code=3))
    assert f"{flag} must be at most {bound}, got " in line, line
    assert_unchanged(before, snapshot(ws), argv)
    assert f"at most {bound}" in " ".join(icl(argv[0], "--help").stdout.split())


def test_pgd_steps_times_restarts_are_bounded_too(sqlite_pair):
    line = one_line(icl("attack", "-w", sqlite_pair, "-e", "icl", "-r", "0", "--against",
                        "base", "--method", "pgd", "--steps", "10000", "--restarts", "100",
                        *COMMON, code=3))
    assert "--steps 10000 x --restarts 100 is 1,000,000 gradient steps per image" in line


def test_threads_and_parallel_are_checked_before_any_process_starts(sqlite_pair,
                                                                    monkeypatch):
    import icl_cli.cli.loop
    from icl_cli.cli import lanes

    started = []
    monkeypatch.setattr(lanes.Board, "run", lambda self: started.append(self) or [])
    monkeypatch.setattr(icl_cli.cli.loop, "cores", lambda: 1)
    names = [x for n in ("base", "icl", "c", "d", "e") for x in ("-e", n)]
    line = one_line(icl("run", "-w", sqlite_pair, *names, "--rounds", "1", "--parallel",
                        "5", *COMMON, code=3))
    assert "--parallel 5 would run 5 processes at once on this machine's 1 cores" in line
    line = one_line(icl("run", "-w", sqlite_pair, "-e", "base", "-e", "icl", "--rounds",
                        "1", "--no-mlflow", "--threads", "100000", code=3))
    assert "--threads 100000 is more than 4 per core" in line
    assert started == []
