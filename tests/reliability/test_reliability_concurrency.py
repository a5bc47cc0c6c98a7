"""Concurrency: two processes on one step of one experiment never both write (one does
the work, the other gets exit 5 "busy" or finds the work done), different experiments of
one workspace run side by side, and the catalog's own locking ("database is locked" on
SQLite, a table lock on PostgreSQL) makes others wait, never reaches a user.

Each runs on both catalog backends: SQLite in the workspace, and a database on a
throwaway PostgreSQL server (``pg_server``), where the experiment lock is also the
server's advisory lock, the one that holds between machines sharing the workspace (two
experiments in parallel on PostgreSQL, ~1 minute here, is ``slow``)."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timezone

import pytest

from store import Store
from tests.kit import COMMON
from tests.reliability.relkit import (
    BACKENDS,
    ELSEWHERE,
    catalog_url,
    check_after_crash,
    copy_ws,
    one_line,
    outcome,
    pg_connect,
    rows,
    run_child,
    spawn,
)

both = pytest.mark.parametrize("backend", BACKENDS)


def _when(value) -> datetime:
    """A step's timestamp as an aware datetime (SQLite returns text, psycopg datetimes)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _no_duplicates(ws) -> None:
    """At most one shard version, one active shard, one checkpoint and one evaluation
    per split for each (experiment, round); each step done once; and no two processes
    ever wrote one experiment at the same time (their finished steps do not overlap)."""
    assert not rows(ws, "SELECT experiment_id, round FROM shards GROUP BY experiment_id, "
                        "round HAVING COUNT(*) > 1"), "a second shard version appeared"
    assert not rows(ws, "SELECT experiment_id, round FROM shards WHERE active GROUP BY "
                        "experiment_id, round HAVING COUNT(*) > 1"), "two active shards"
    assert not rows(ws, "SELECT experiment_id, round FROM checkpoints GROUP BY "
                        "experiment_id, round HAVING COUNT(*) > 1")
    assert not rows(ws, "SELECT experiment_id, round, split FROM evaluations GROUP BY "
                        "experiment_id, round, split HAVING COUNT(*) > 1")
    assert not rows(ws, "SELECT experiment_id, name, round FROM steps WHERE state = 'ok' "
                        "GROUP BY experiment_id, name, round HAVING COUNT(*) > 1"), \
        "a step ran twice"
    assert not rows(ws, "SELECT id FROM steps WHERE state = 'running'")
    done = rows(ws, "SELECT experiment_id, pid, started_at, finished_at FROM steps "
                    "WHERE state = 'ok'")
    for e1, p1, s1, f1 in done:
        for e2, p2, s2, f2 in done:
            if e1 == e2 and p1 != p2:
                assert _when(f1) <= _when(s2) or _when(f2) <= _when(s1), \
                    f"processes {p1} and {p2} wrote experiment {e1} at the same time"


def _race(ws, logs, fault=None) -> list[int]:
    """Two processes on each step in turn; returns the exit codes of the losers (5:
    busy; none when the second found the work done)."""
    busy = []
    for argv in (["synthesize", "--round", "1"], ["reclassify", "--round", "1"],
                 ["run", "--rounds", "1"]):
        a, b = (spawn([*argv, "-w", ws, *COMMON], logs, fault=fault) for _ in range(2))
        results = [a.wait(), b.wait()]
        assert sorted(r.code for r in results) in ([0, 0], [0, 5]), results
        for r in results:
            if r.code == 5:
                assert "busy" in one_line(r) and "wait for it to finish" in r.stderr
                busy.append(r)
        _no_duplicates(ws)
    return busy


@both
def test_two_processes_on_the_same_step_never_both_write(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    _race(ws, logs)
    assert check_after_crash(ws, logs)["ok"]
    assert outcome(ws, "icl") == templates.reference  # as if one process had done it all


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_machines_on_one_postgresql_catalog_never_both_write(templates, tmp_path, logs):
    """Two "machines" mount one workspace (shared storage whose file locks hold nothing,
    as over NFS) and share its PostgreSQL catalog: the server's advisory lock alone keeps
    them apart. One writer per step; the other is told the experiment is busy on another
    machine (exit 5, one line); no duplicate row; ``icl verify`` clean after."""
    ws = templates.copy("round0", tmp_path / "ws")
    busy = _race(ws, logs, fault=ELSEWHERE)
    assert busy, "the two processes never overlapped: nothing was tested"
    for r in busy:
        assert r.code == 5 and "on another machine holds its lock" in one_line(r), r
    assert check_after_crash(ws, logs)["ok"]
    assert outcome(ws, "icl") == templates.reference


@both
def test_a_busy_experiment_names_its_holder_and_frees_on_exit(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    with Store.open(ws, catalog_url(ws)) as st, \
            st.lock("icl", command="reclassify --round 1 -e icl"):
        res = run_child(["synthesize", "-w", ws, "--round", "1", *COMMON], logs, code=5)
        line = one_line(res)
        assert f"pid {os.getpid()}" in line and "reclassify --round 1" in line
        # Other experiments and read-only commands are not blocked.
        run_child(["status", "-w", ws, "--json"], logs)
    run_child(["synthesize", "-w", ws, "--round", "1", *COMMON], logs)


@both
def test_a_long_catalog_writer_makes_others_wait_not_fail(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    url = catalog_url(ws)
    if url is None:
        con = sqlite3.connect(ws / ".icl" / "catalog.db", isolation_level=None)
        con.execute("BEGIN IMMEDIATE")  # hold SQLite's write lock, as a slow writer would
    else:  # hold every table against writers (readers go on), as a slow writer would
        con = pg_connect(url)
        con.execute("BEGIN")
        con.execute("LOCK TABLE experiments, steps, shards, checkpoints, evaluations "
                    "IN EXCLUSIVE MODE")
    try:
        child = spawn(["synthesize", "-w", ws, "--round", "1", *COMMON], logs)
        time.sleep(1.5)
        assert child.alive()  # waiting for the catalog, not failed
    finally:
        con.execute("ROLLBACK")
        con.close()
    res = child.wait()
    assert res.code == 0 and "locked" not in res.stderr, res


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_two_experiments_of_one_workspace_run_in_parallel(pair, templates, tmp_path, logs):
    ws = copy_ws(pair, tmp_path / "ws")
    runs = [spawn(["run", "-w", ws, "-e", e, "--rounds", "1", *COMMON], logs)
            for e in ("base", "icl")]
    for argv in (["status", "--json"], ["verify"], ["evaluate", "-e", "base", *COMMON]):
        res = run_child([argv[0], "-w", ws, *argv[1:]], logs, code=None)  # meanwhile
        assert res.code == 0, res
        assert "locked" not in res.stderr and "Traceback" not in res.stderr
    for r in runs:
        res = r.wait()
        assert res.code == 0 and res.stderr == "", res
    _no_duplicates(ws)
    assert check_after_crash(ws, logs)["ok"]
    for exp in ("base", "icl"):
        assert {r for r, in rows(ws, "SELECT round FROM checkpoints c JOIN experiments e ON "
                                     "c.experiment_id = e.id WHERE e.name = ?", exp)} == {0, 1}
    # 'icl' started from the baseline's C_0, which is the C_0 the template trained itself.
    assert outcome(ws, "icl") == templates.reference


def test_a_deleted_lock_file_does_not_let_a_second_writer_in(tmp_path):
    """The holder also locks the experiment's folder: a user who deletes
    `.icl/locks/icl.lock` while a step runs does not open the door to a second process."""
    import subprocess
    import sys

    import pytest

    from store import BusyError

    store = Store.init(tmp_path / "ws")
    store.create_experiment("icl", {"method": "icl"})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from store import Store; "
         "st = Store.open(sys.argv[1]); cm = st.lock('icl'); cm.__enter__(); "
         "print('held', flush=True); time.sleep(30)", str(tmp_path / "ws")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store.lock_path("icl").unlink()
        with pytest.raises(BusyError, match="experiment 'icl' is busy"):
            with store.lock("icl"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("icl"):  # free again once the holder is gone
        pass
