"""Concurrency: two processes on one step of one experiment never both write (one does
the work, the other gets exit 5 "busy" or finds the work done), different experiments of
one workspace run side by side, and SQLite's "database is locked" never reaches a user."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

from relkit import COMMON, check_after_crash, one_line, outcome, rows, run_child, spawn

from store import Store


def _no_duplicates(ws) -> None:
    assert not rows(ws, "SELECT experiment_id, round FROM shards GROUP BY experiment_id, "
                        "round HAVING COUNT(*) > 1"), "a second shard version appeared"
    assert not rows(ws, "SELECT experiment_id, round FROM checkpoints GROUP BY "
                        "experiment_id, round HAVING COUNT(*) > 1")
    assert not rows(ws, "SELECT experiment_id, name, round FROM steps WHERE state = 'ok' "
                        "GROUP BY experiment_id, name, round HAVING COUNT(*) > 1"), \
        "a step ran twice"


def test_two_processes_on_the_same_step_never_both_write(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    for argv in (["synthesize", "--round", "1"], ["reclassify", "--round", "1"],
                 ["run", "--rounds", "1"]):
        a, b = (spawn([*argv, "-w", ws, *COMMON], logs) for _ in range(2))
        results = [a.wait(), b.wait()]
        assert sorted(r.code for r in results) in ([0, 0], [0, 5]), results
        for r in results:
            if r.code == 5:
                assert "busy" in one_line(r) and "wait for it to finish" in r.stderr
        _no_duplicates(ws)
    assert check_after_crash(ws, logs)["ok"]
    assert outcome(ws, "icl") == templates.reference  # as if one process had done it all


def test_a_busy_experiment_names_its_holder_and_frees_on_exit(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    with Store.open(ws) as st, st.lock("icl", command="reclassify --round 1 -e icl"):
        res = run_child(["synthesize", "-w", ws, "--round", "1", *COMMON], logs, code=5)
        line = one_line(res)
        assert f"pid {os.getpid()}" in line and "reclassify --round 1" in line
        # Other experiments and read-only commands are not blocked.
        run_child(["status", "-w", ws, "--json"], logs)
    run_child(["synthesize", "-w", ws, "--round", "1", *COMMON], logs)


def test_a_long_catalog_writer_makes_others_wait_not_fail(templates, tmp_path, logs):
    ws = templates.copy("round0", tmp_path / "ws")
    con = sqlite3.connect(ws / ".icl" / "catalog.db", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # hold SQLite's write lock, as a slow writer would
    try:
        child = spawn(["synthesize", "-w", ws, "--round", "1", *COMMON], logs)
        time.sleep(1.5)
        assert child.alive()  # waiting for the catalog, not failed
    finally:
        con.execute("ROLLBACK")
        con.close()
    res = child.wait()
    assert res.code == 0 and "locked" not in res.stderr, res


def test_two_experiments_of_one_workspace_run_in_parallel(pair, templates, tmp_path, logs):
    ws = tmp_path / "ws"
    shutil.copytree(pair, ws)
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
