"""The catalog on PostgreSQL (issue 12): the same store behaviour on both backends, the
schema upgraded the same way, and a per-experiment lock that holds across machines (an
advisory lock on the server). Needs ``initdb``/``pg_ctl`` and psycopg; skipped without."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch

from store import BusyError, CatalogMissing, Store
from store.locking import advisory_key


def _state(seed: int) -> dict:
    return {"model": {"w": torch.full((2,), float(seed))}, "config": {"method": "icl"}}


def test_a_round_trip_on_each_backend(any_store, make_arrays, attrs):
    st = any_store
    st.create_experiment("base", {"method": "baseline"})
    c0 = st.save_checkpoint("icl", 0, _state(0))
    with st.step("icl", "synthesize", 1, {"count": 2}):
        sh = st.write_shard("icl", 1, make_arrays(), {**attrs, "source_checkpoint": c0.sha256})
    st.record_evaluation("icl", 0, "test", 0.5, [0.5] * 10, 10)
    st.record_attack("icl", 0, "base", 0, 0.1, {"made": 4, "fool_self": 1})
    st.record_attack("icl", 0, "base", 0, 0.1, {"made": 4, "fool_self": 3}, method="pgd",
                     params={"steps": 40, "step_size": 0.01, "restarts": 1,
                             "random_start": True})
    st.record_metrics("icl", 1, {"grad_norm_max": 2.0})
    with Store.open(st.root, st.catalog_url) as again:
        assert again.read_shard(again.active_shard("icl", 1))["samples"].shape[0] == sh.count
        assert again.load_checkpoint(again.checkpoint("icl", 0))["round"] == 0
        assert sorted(a.method for a in again.attacks("icl")) == ["fgsm", "pgd"]
        assert [s.state for s in again.steps("icl")] == ["ok"]
        assert again.metrics("icl") == {1: {"grad_norm_max": 2.0}}
        assert again.verify().ok


def test_a_version_2_catalog_on_postgresql_is_upgraded(pg_server, tmp_path):
    url = pg_server.new_url()
    engine = sa.create_engine(url)
    with engine.begin() as con:  # version 2's tables, as an older icl created them
        con.exec_driver_sql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        con.exec_driver_sql("INSERT INTO schema_version VALUES (2)")
        con.exec_driver_sql(
            "CREATE TABLE experiments (id SERIAL PRIMARY KEY, name VARCHAR(64) UNIQUE NOT NULL,"
            " config JSON NOT NULL, config_hash VARCHAR(64) NOT NULL, method VARCHAR(32), "
            "parent_name VARCHAR(64), parent_round INTEGER, mlflow_run_id VARCHAR(64), "
            "created_at TIMESTAMP WITH TIME ZONE NOT NULL, data_fingerprint VARCHAR(64))")
        con.exec_driver_sql(
            "CREATE TABLE attacks (id SERIAL PRIMARY KEY, experiment_id INTEGER NOT NULL "
            "REFERENCES experiments(id) ON DELETE CASCADE, round INTEGER NOT NULL, "
            "against_experiment VARCHAR(64) NOT NULL, against_round INTEGER NOT NULL, "
            "eps FLOAT NOT NULL, counts JSON NOT NULL, created_at TIMESTAMP WITH TIME ZONE "
            "NOT NULL, UNIQUE (experiment_id, round, against_experiment, against_round, eps))")
        con.exec_driver_sql("CREATE INDEX ix_attacks_experiment_id ON attacks (experiment_id)")
        con.exec_driver_sql("INSERT INTO experiments (name, config, config_hash, created_at) "
                            "VALUES ('icl', '{}', 'x', now())")
        con.exec_driver_sql("INSERT INTO attacks (experiment_id, round, against_experiment, "
                            "against_round, eps, counts, created_at) VALUES "
                            "(1, 1, 'icl', 1, 0.1, '{\"made\": 3}', now())")
    engine.dispose()
    with Store.init(tmp_path / "ws", url) as st:
        assert [(a.method, a.counts) for a in st.attacks()] == [("fgsm", {"made": 3})]
        st.record_attack("icl", 1, "icl", 1, 0.1, {"made": 3}, method="pgd")
        assert len(st.attacks()) == 2
        with st.catalog.read() as s:
            assert s.execute(sa.text("SELECT version FROM schema_version")).all() == [(3,)]


def test_the_lock_holds_across_machines_through_the_server(pg_server, tmp_path):
    import psycopg

    url = pg_server.new_url()
    with Store.init(tmp_path / "ws", url) as st:
        st.create_experiment("icl", {"method": "icl"})
        with st.lock("icl"):  # ours: re-entrant, and not "elsewhere"
            with st.lock("icl"):
                assert not st.locks.held_elsewhere("icl")
        # Another machine: the same workspace on shared storage, so no flock of ours sees
        # it; only the server's advisory lock does.
        dsn = st.catalog.engine.url.set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (advisory_key("icl"),))
            assert st.locks.held_elsewhere("icl")
            with pytest.raises(BusyError, match=r"experiment 'icl' is busy: an icl process "
                               r"on another machine holds its lock"):
                with st.step("icl", "synthesize", 1, {}):
                    pass
            assert st.steps("icl") == []  # refused before any row was written
            other.execute("SELECT pg_advisory_unlock(%s)", (advisory_key("icl"),))
        with st.step("icl", "synthesize", 1, {}):
            assert not st.locks.held_elsewhere("icl")
        assert [s.state for s in st.steps("icl")] == ["ok"]


def test_a_lost_postgresql_catalog_is_refused_then_rebuilt(pg_server, tmp_path):
    url = pg_server.new_url()
    with Store.init(tmp_path / "ws", url) as st:
        st.create_experiment("icl", {"method": "icl"})
        c0 = st.save_checkpoint("icl", 0, _state(0))
    engine = sa.create_engine(url)
    with engine.begin() as con:
        con.exec_driver_sql("DELETE FROM experiments")
    engine.dispose()
    with pytest.raises(CatalogMissing, match=r"the catalog postgresql\+psycopg://icl@/t\w+"
                       r"\?host=\S+ is empty, but experiments/ holds the shards and "
                       r"checkpoints of 'icl'"):
        Store.open(tmp_path / "ws", url)
    with Store.rebuild(tmp_path / "ws", url) as st:
        assert st.checkpoint("icl", 0).sha256 == c0.sha256
    assert not (tmp_path / "ws" / ".icl" / "catalog.db").exists()  # no SQLite file involved
