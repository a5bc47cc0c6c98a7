"""The catalog's plain-SQL read path (store.reader) against the ORM (store.orm): every field
that status, report and verify show comes back the same on both, on each backend; the
SQLite path imports no SQLAlchemy; ``steps(last=, state=)`` are slices of ``steps()``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from store import CatalogDamaged, Store, StoreError
from store.catalog import SCHEMA_VERSION, to_info
from store.infos import AttackInfo, CheckpointInfo, EvaluationInfo, ShardInfo, StepInfo
from store.orm import (
    Attack,
    Checkpoint,
    Evaluation,
    Experiment,
    RoundMetric,
    Shard,
    Step,
    experiment_info,
)


def _fill(st, make_arrays, attrs) -> None:
    """Every kind of row, with the awkward values: a parent, two shard versions (one no
    longer active), a NULL metric, attacks with and without params, a failed step."""
    st.create_experiment("base", {"method": "baseline", "data": {"n": [1, 2]}},
                         data_fingerprint="f" * 64)
    st.create_experiment("icl-2", {"method": "icl"}, parent="base", parent_round=0)
    c0 = st.save_checkpoint("icl", 0, {"model": {"w": torch.zeros(2)},
                                       "config": {"method": "icl"}})
    st.save_checkpoint("icl", 1, {"model": {"w": torch.ones(2)}}, parent=c0)
    for seed in (1, 2):
        with st.step("icl", "synthesize", 1, {"count": 2, "seed": seed}):
            st.write_shard("icl", 1, make_arrays(seed=seed), {**attrs, "seed": seed})
    with pytest.raises(ValueError), st.step("icl", "reclassify", 1, {"train": {"epochs": 1}}):
        raise ValueError("diverged")
    with st.step("base", "evaluate", None, {}):
        pass
    st.record_evaluation("icl", 0, "test", 0.125, [0.5, 0.25] + [0.0] * 8, 10)
    st.record_evaluation("icl", 0, "val", 0.25, [0.0] * 10, 8)
    st.record_evaluation("base", 0, "test", 0.5, [0.5] * 10, 4)
    st.record_attack("icl", 0, "base", 0, 0.1, {"a_made": [9, 3, 1], "n": 9})
    st.record_attack("icl", 0, "base", 0, 0.1, {"a_made": [9, 5, 2]}, method="pgd",
                     params={"steps": 40, "step_size": 0.01, "random_start": True})
    st.record_metrics("icl", 1, {"grad_norm_max": 2.5, "pool_logit_max": float("nan")})
    st.record_metrics("icl", 0, {"test_ece": 0.03})


def _orm(st) -> dict:
    """What the ORM reads from the same catalog, as the infos the reader returns."""
    root = st.root
    with st.catalog.read() as s:
        exps = [experiment_info(r) for r in s.scalars(
            select(Experiment).order_by(Experiment.created_at, Experiment.id))]
        out: dict = {"experiments": exps, "shards": {}, "checkpoints": {}, "metrics": {}}
        for e in exps:
            q = select(Shard).join(Experiment).where(Experiment.name == e.name)
            out["shards"][e.name] = [to_info(
                ShardInfo, r, experiment=e.name, path=root / r.path,
                sampler_config=dict(r.sampler_config or {}),
                source_checkpoint=r.source_checkpoint_sha256)
                for r in s.scalars(q.order_by(Shard.round, Shard.version))]
            q = select(Checkpoint).join(Experiment).where(Experiment.name == e.name)
            out["checkpoints"][e.name] = [to_info(CheckpointInfo, r, experiment=e.name,
                                                  path=root / r.path)
                                          for r in s.scalars(q.order_by(Checkpoint.round))]
            metrics: dict = {}
            for r in s.scalars(select(RoundMetric).join(Experiment).where(
                    Experiment.name == e.name).order_by(RoundMetric.round, RoundMetric.name)):
                metrics.setdefault(r.round, {})[r.name] = r.value
            out["metrics"][e.name] = metrics
        out["evaluations"] = [to_info(EvaluationInfo, r, experiment=n) for r, n in s.execute(
            select(Evaluation, Experiment.name).join(Experiment)
            .order_by(Experiment.name, Evaluation.round, Evaluation.split))]
        out["attacks"] = [to_info(AttackInfo, r, experiment=n, method=r.method or "fgsm")
                          for r, n in s.execute(select(Attack, Experiment.name).join(Experiment)
                                                .order_by(Experiment.name, Attack.round,
                                                          Attack.id))]
        out["steps"] = [to_info(StepInfo, r, experiment=n) for r, n in s.execute(
            select(Step, Experiment.name).join(Experiment).order_by(Step.started_at, Step.id))]
    return out


def test_the_reader_returns_what_the_orm_reads_on_each_backend(any_store, make_arrays,
                                                                attrs):
    st = any_store
    _fill(st, make_arrays, attrs)
    want = _orm(st)
    with Store.open(st.root, st.catalog_url) as again:  # a fresh store, as a command opens
        assert again.experiments() == want["experiments"]
        assert [again.experiment(e.name) for e in want["experiments"]] == want["experiments"]
        assert again.experiment() == want["experiments"][-1]
        for e in want["experiments"]:
            assert again.shards(e.name) == want["shards"][e.name]
            assert again.shards(e.name, active_only=True) == [
                s for s in want["shards"][e.name] if s.active]
            assert again.shards(e.name, round=2) == []
            assert again.checkpoints(e.name) == want["checkpoints"][e.name]
            assert again.metrics(e.name) == want["metrics"][e.name]
            assert again.evaluations(e.name) == [
                v for v in want["evaluations"] if v.experiment == e.name]
            assert again.attacks(e.name) == [
                a for a in want["attacks"] if a.experiment == e.name]
        assert again.evaluations() == want["evaluations"]
        assert again.attacks() == want["attacks"]
        assert again.steps() == want["steps"]
        # The values themselves, decoded as the ORM decodes them:
        icl = again.experiment("icl-2")
        assert (icl.parent, icl.parent_round, icl.config) == ("base", 0, {"method": "icl"})
        assert again.experiment("base").data_fingerprint == "f" * 64
        sh = again.shards("icl")
        assert [(s.version, s.active) for s in sh] == [(1, False), (2, True)]
        assert sh[1].sampler_config == attrs["sampler_config"]
        assert sh[1].created_at.tzinfo is not None and sh[1].path.is_file()
        ck = again.checkpoints("icl")
        assert ck[1].parent_sha256 == ck[0].sha256
        assert again.metrics("icl") == {0: {"test_ece": 0.03},
                                        1: {"grad_norm_max": 2.5, "pool_logit_max": None}}
        pgd = [a for a in again.attacks("icl") if a.method == "pgd"][0]
        assert pgd.params == {"steps": 40, "step_size": 0.01, "random_start": True}
        assert [a.params for a in again.attacks("icl") if a.method == "fgsm"] == [None]
        assert [v.per_class[:2] for v in again.evaluations("icl")] == [[0.5, 0.25], [0.0, 0.0]]
        steps = again.steps()
        assert [(s.name, s.state) for s in steps] == [
            ("synthesize", "ok"), ("synthesize", "ok"), ("reclassify", "failed"),
            ("evaluate", "ok")]
        assert steps[2].message == "diverged" and steps[2].config == {"train": {"epochs": 1}}
        assert steps[3].round is None and steps[0].seconds >= 0
        assert again.verify().ok


def test_steps_last_and_state_are_slices_of_the_whole_log(store):
    for r in range(4):
        with store.step("icl", "synthesize", r + 1, {"r": r}):
            pass
    whole = store.steps()
    for n in range(1, 6):
        assert store.steps(last=n) == whole[-n:], n
    assert store.steps(last=0) == []
    assert store.steps("icl", name="synthesize", round=2, last=3) == whole[1:2]
    assert store.steps(state="ok", last=2) == whole[-2:]
    assert store.steps(state="running") == [] and store.steps(state="nonsense") == []
    # A row left "running" by a process that is gone reads as interrupted, never running.
    db = store.root / ".icl" / "catalog.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE steps SET state = 'running', finished_at = NULL, pid = ? "
                    "WHERE round = 3", (2**22 + 12345,))
    con.close()
    assert [s.round for s in store.steps(state="interrupted")] == [3]
    assert store.steps(state="running") == []
    assert [s.state for s in store.steps(last=2)] == ["interrupted", "ok"]
    with store.step("icl", "evaluate", 1, {}):  # this process's own step is running
        assert [(s.name, s.state) for s in store.steps(state="running")] == [
            ("evaluate", "running")]


def _fresh(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process, from the repository's root (its store)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], env=env)


def test_reading_a_sqlite_catalog_imports_no_sqlalchemy(store, make_arrays, attrs):
    """What status, report and verify read, in a fresh process: no SQLAlchemy (nor torch,
    MLflow, h5py)."""
    _fill(store, make_arrays, attrs)
    code = f"""if True:
        import sys
        from store import Store
        with Store.open({str(store.root)!r}) as st:
            for e in st.experiments():
                st.shards(e.name, active_only=True), st.checkpoints(e.name)
                st.evaluations(e.name), st.attacks(e.name), st.metrics(e.name)
                st.stale_rounds(e.name)
            st.steps(last=5), st.steps(state="running")
            assert st.verify().ok
        heavy = sorted(m for m in ("sqlalchemy", "torch", "mlflow", "h5py") if m in sys.modules)
        print(" ".join(heavy) or "none")
    """
    out = _fresh(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none"]


def test_a_catalog_not_current_is_checked_and_upgraded_by_the_orm(store):
    db = store.root / ".icl" / "catalog.db"
    store.close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    con.close()
    with pytest.raises(StoreError, match=rf"catalog schema {SCHEMA_VERSION + 1} is newer than "
                       rf"this icl \({SCHEMA_VERSION}\); upgrade icl"):
        Store.open(store.root)
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM schema_version")
        con.execute("DROP TABLE schema_version")
    con.close()
    with pytest.raises(StoreError, match="has no icl schema; run `icl init`"):
        Store.open(store.root)


def test_a_damaged_catalog_is_reported_by_the_reader(store):
    db = store.root / ".icl" / "catalog.db"
    store.close()
    for side in ("catalog.db-wal", "catalog.db-shm"):
        (db.parent / side).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database " * 200)
    with pytest.raises(CatalogDamaged, match="the workspace catalog is damaged: file is not "
                       "a database"):
        Store.open(store.root).experiments()
