"""Locks, the step log and verify/repair."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from store import BusyError, Store

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_second_process_gets_busy_error(store):
    holder = _python(
        f"""
        import sys
        from store import Store
        st = Store.open({str(store.root)!r})
        with st.lock("icl", command="synthesize --round 3"):
            print("locked", flush=True)
            sys.stdin.read()   # hold until the test closes stdin
        """
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError) as e:
            with store.lock("icl"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "`synthesize --round 3`" in msg
        assert msg.startswith("experiment 'icl' is busy")
        with pytest.raises(BusyError):
            with store.step("icl", "reclassify", 3, {}):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with store.lock("icl"), store.lock("icl"):  # free again, and re-entrant
        pass
    with store.lock("icl", wait=True):
        pass


def test_step_states(store):
    with store.step("icl", "synthesize", 1, {"count": 2}) as running:
        assert running.state == "running"
        assert store.steps("icl")[0].state == "running"  # our own pid: not stale
    with pytest.raises(ValueError), store.step("icl", "reclassify", 1, {}):
        raise ValueError("loss is nan\nat epoch 3")
    with pytest.raises(KeyboardInterrupt), store.step("icl", "evaluate", 1, {}):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit), store.step("icl", "evaluate", 2, {}):
        raise SystemExit(0)
    got = [(s.name, s.round, s.state, s.message) for s in store.steps("icl")]
    assert got == [
        ("synthesize", 1, "ok", None),
        ("reclassify", 1, "failed", "loss is nan at epoch 3"),
        ("evaluate", 1, "interrupted", "interrupted (Ctrl-C)"),
        ("evaluate", 2, "ok", None),
    ]
    first = store.steps("icl", name="synthesize")[0]
    assert first.config == {"count": 2} and first.seconds >= 0 and first.finished_at


def test_dead_running_step_reads_as_interrupted_and_repair_marks_it(store):
    dying = _python(
        f"""
        import os
        from store import Store
        st = Store.open({str(store.root)!r})
        with st.step("icl", "synthesize", 2, {{"count": 5}}):
            os._exit(3)   # killed mid-step: no chance to finish the row
        """
    )
    assert dying.wait(timeout=30) == 3
    (step,) = store.steps("icl")
    assert (step.state, step.finished_at, step.pid) == ("interrupted", None, dying.pid)
    report = store.verify()
    assert not report.ok and any("died while running" in p for p in report.problems)
    report = store.verify(repair=True)
    assert report.ok and any("interrupted" in r for r in report.repaired)
    (step,) = store.steps("icl")
    assert step.state == "interrupted" and step.finished_at is not None
    with store.lock("icl"):  # the kernel released the dead process's lock
        pass


def test_verify_finds_tmp_and_orphan_and_repair_removes_tmp_only(
    store, make_arrays, attrs, tmp_path
):
    info = store.write_shard("icl", 1, make_arrays(), attrs)
    shards = info.path.parent
    tmp = shards / "round-0002.v1.h5.tmp-999999999-abcd1234"  # a writer that died
    tmp.write_bytes(b"half a shard")
    orphan = shards / "round-0009.v1.h5"
    orphan.write_bytes(b"not in the catalog")
    clean = store.verify()
    assert clean.temporary == [tmp] and clean.orphans == [orphan]
    assert clean.problems == [] and not clean.ok

    fixed = store.verify(repair=True)
    assert not tmp.exists() and orphan.exists() and info.path.exists()
    assert fixed.temporary == [] and fixed.orphans == [orphan] and fixed.ok
    assert store.read_shard(info)["samples"].shape == (12, 1, 8, 8)


def test_verify_reports_altered_and_missing_files(store, make_arrays, attrs):
    import torch

    shard = store.write_shard("icl", 1, make_arrays(), attrs)
    ck = store.save_checkpoint("icl", 1, {"model": {"w": torch.ones(2)}})
    shard.path.write_bytes(b"x")
    ck.path.unlink()
    report = store.verify(repair=True)
    assert not report.ok and len(report.problems) == 2
    assert "round-0001.v1.h5 failed its sha256 check" in report.problems[0]
    assert "round-0001.pt is missing" in report.problems[1]
    assert shard.path.exists()  # repair never deletes referenced files


def test_write_failure_after_rename_leaves_no_file(store, make_arrays, attrs, monkeypatch):
    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.catalog, "write", fail)  # the row's transaction
    with pytest.raises(KeyboardInterrupt):
        store.write_shard("icl", 1, make_arrays(), attrs)
    assert list((store.root / "experiments/icl/shards").iterdir()) == []
    monkeypatch.undo()
    assert store.write_shard("icl", 1, make_arrays(), attrs).version == 1


def test_reopen_sees_everything(store, make_arrays, attrs):
    store.write_shard("icl", 1, make_arrays(), attrs)
    with Store.open(store.root) as again:
        assert [s.version for s in again.shards("icl")] == [1]
