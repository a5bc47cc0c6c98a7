"""The catalog on PostgreSQL (issue 12): the same store behaviour on both backends, the
schema created, versioned and upgraded the same way (the Alembic migrations of
``store/migrations``), and a per-experiment lock that holds across machines (an advisory
lock on the server). Needs ``initdb``/``pg_ctl`` and psycopg; skipped without."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from storekit import schema_differences

from store import BusyError, CatalogMissing, Store, StoreError
from store.catalog import SCHEMA_REVISION, SCHEMA_VERSION
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


# ------------------------------------------------------------------ Alembic
# Version 1 as icl 0.1's create_all made it on PostgreSQL, with a row in every table.
V1 = """
CREATE TABLE experiments (id SERIAL NOT NULL, name VARCHAR(64) NOT NULL, config JSON NOT NULL,
  config_hash VARCHAR(64) NOT NULL, method VARCHAR(32), parent_name VARCHAR(64),
  parent_round INTEGER, mlflow_run_id VARCHAR(64), created_at TIMESTAMP WITH TIME ZONE NOT NULL,
  PRIMARY KEY (id), UNIQUE (name));
CREATE TABLE schema_version (version SERIAL NOT NULL, PRIMARY KEY (version));
CREATE TABLE attacks (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL, round INTEGER NOT NULL,
  against_experiment VARCHAR(64) NOT NULL, against_round INTEGER NOT NULL, eps FLOAT NOT NULL,
  counts JSON NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (id),
  UNIQUE (experiment_id, round, against_experiment, against_round, eps),
  FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_attacks_experiment_id ON attacks (experiment_id);
CREATE TABLE checkpoints (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL,
  round INTEGER NOT NULL, path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, parent_id INTEGER,
  parent_sha256 VARCHAR(64), config_hash VARCHAR(64),
  created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (id), UNIQUE (experiment_id, round),
  FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE,
  FOREIGN KEY(parent_id) REFERENCES checkpoints (id) ON DELETE SET NULL);
CREATE INDEX ix_checkpoints_experiment_id ON checkpoints (experiment_id);
CREATE TABLE evaluations (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL,
  round INTEGER NOT NULL, split VARCHAR(32) NOT NULL, error FLOAT NOT NULL,
  per_class JSON NOT NULL, n INTEGER NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
  PRIMARY KEY (id), UNIQUE (experiment_id, round, split),
  FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_evaluations_experiment_id ON evaluations (experiment_id);
CREATE TABLE shards (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL, round INTEGER NOT NULL,
  version INTEGER NOT NULL, active BOOLEAN NOT NULL, path TEXT NOT NULL,
  sha256 VARCHAR(64) NOT NULL, count INTEGER NOT NULL, sampler_config JSON NOT NULL,
  seed INTEGER, source_checkpoint_sha256 VARCHAR(64),
  created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (id),
  UNIQUE (experiment_id, round, version),
  FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_shards_experiment_id ON shards (experiment_id);
CREATE TABLE steps (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL, name VARCHAR(32) NOT NULL,
  round INTEGER, config JSON NOT NULL, config_hash VARCHAR(64) NOT NULL,
  started_at TIMESTAMP WITH TIME ZONE NOT NULL, finished_at TIMESTAMP WITH TIME ZONE,
  seconds FLOAT, state VARCHAR(16) NOT NULL, message TEXT, pid INTEGER, host VARCHAR(255),
  PRIMARY KEY (id), FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_steps_experiment_id ON steps (experiment_id);
INSERT INTO schema_version VALUES (1);
INSERT INTO experiments (name, config, config_hash, method, created_at) VALUES
  ('base', '{"method": "baseline"}', 'b', 'baseline', '2026-11-27 10:00:00+00'),
  ('icl', '{"method": "icl"}', 'i', 'icl', '2026-11-27 10:00:01+00');
INSERT INTO checkpoints (experiment_id, round, path, sha256, created_at) VALUES
  (2, 0, 'experiments/icl/checkpoints/round-0000.pt', 'c0', '2026-11-27 10:00:02+00');
INSERT INTO shards (experiment_id, round, version, active, path, sha256, count,
  sampler_config, seed, created_at) VALUES (2, 1, 1, true,
  'experiments/icl/shards/round-0001.v1.h5', 's1', 4, '{"lr": 0.05}', 7,
  '2026-11-27 10:00:03+00');
INSERT INTO evaluations (experiment_id, round, split, error, per_class, n, created_at) VALUES
  (2, 1, 'test', 0.25, '[0.25]', 100, '2026-11-27 10:00:04+00');
INSERT INTO attacks (experiment_id, round, against_experiment, against_round, eps, counts,
  created_at) VALUES (2, 1, 'base', 1, 0.125, '{"made": 10}', '2026-11-27 10:00:05+00'),
  (2, 1, 'base', 1, 0.25, '{"made": 10}', '2026-11-27 10:00:06+00');
INSERT INTO steps (experiment_id, name, round, config, config_hash, started_at, state) VALUES
  (2, 'synthesize', 1, '{}', 'x', '2026-11-27 10:00:07+00', 'ok');
"""
V2 = """
ALTER TABLE experiments ADD COLUMN data_fingerprint VARCHAR(64);
UPDATE experiments SET data_fingerprint = 'fp' WHERE name = 'base';
CREATE TABLE round_metrics (id SERIAL NOT NULL, experiment_id INTEGER NOT NULL,
  round INTEGER NOT NULL, name VARCHAR(64) NOT NULL, value FLOAT,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (id),
  UNIQUE (experiment_id, round, name),
  FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_round_metrics_experiment_id ON round_metrics (experiment_id);
INSERT INTO round_metrics (experiment_id, round, name, value, created_at) VALUES
  (2, 1, 'grad_norm_max', 3.5, '2026-11-27 10:00:08+00');
UPDATE schema_version SET version = 2;
"""
ROOT = Path(__file__).resolve().parents[2]


def _old_catalog(url: str, version: int, ws: Path) -> Path:
    """A workspace at ``ws`` whose catalog at ``url`` is of ``version`` (1 or 2) as an icl
    before Alembic made it (no alembic_version)."""
    engine = sa.create_engine(url)
    with engine.begin() as con:
        for sql in (V1, V2)[:version]:
            con.exec_driver_sql(sql)
    engine.dispose()
    (ws / ".icl" / "locks").mkdir(parents=True)
    (ws / "experiments").mkdir()
    return ws


def _snapshot(url: str) -> dict[str, list[dict]]:
    """{table: its rows in id order, as {column: value}} of every table at ``url``."""
    engine = sa.create_engine(url)
    try:
        out = {}
        with engine.connect() as con:
            for table in sa.inspect(engine).get_table_names():
                rows = [dict(r._mapping) for r in con.exec_driver_sql(f"SELECT * FROM {table}")]
                out[table] = sorted(rows, key=lambda r: r.get("id", 0))
        return out
    finally:
        engine.dispose()


def test_a_fresh_postgresql_catalog_is_made_at_the_alembic_head(pg_server, tmp_path):
    url = pg_server.new_url()
    Store.init(tmp_path / "ws", url).close()
    tables = _snapshot(url)
    assert tables["alembic_version"] == [{"version_num": SCHEMA_REVISION}]
    assert tables["schema_version"] == [{"version": SCHEMA_VERSION}]
    assert schema_differences(url) == []


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_postgresql_catalog_is_migrated_to_the_head_with_every_row(pg_server, tmp_path,
                                                                          version):
    url = pg_server.new_url()
    ws = _old_catalog(url, version, tmp_path / "ws")
    before = _snapshot(url)
    assert schema_differences(url) != []  # the comparison sees what an old schema lacks
    with Store.open(ws, url) as st:
        assert [(a.eps, a.method, a.params) for a in st.attacks("icl")] == [
            (0.125, "fgsm", None), (0.25, "fgsm", None)]
        assert st.experiment("base").data_fingerprint == (None if version == 1 else "fp")
        # New ids after the old ones: no clash with a row copied over.
        st.record_attack("icl", 1, "base", 1, 0.125, {"made": 10}, method="pgd")
        st.record_metrics("icl", 2, {"grad_norm_max": 1.0})
        st.create_experiment("new", {"method": "baseline"})
    after = _snapshot(url)
    assert after["alembic_version"] == [{"version_num": SCHEMA_REVISION}]
    assert after["schema_version"] == [{"version": SCHEMA_VERSION}]
    for table, rows in before.items():
        got = [{c: r[c] for c in rows[0]} for r in after[table][:len(rows)]] if rows else []
        if table == "attacks":  # re-created: the same rows in order, as FGSM, new ids
            assert [{**r, "id": 0} for r in got] == [{**r, "id": 0} for r in rows]
            assert [(r["method"], r["params"]) for r in after[table]] == [
                ("fgsm", None), ("fgsm", None), ("pgd", None)]
        elif table != "schema_version":
            assert got == rows, table
    assert schema_differences(url) == []  # the migrated schema is the models'


def test_a_postgresql_catalog_at_a_revision_this_icl_does_not_know_is_refused(pg_server,
                                                                              tmp_path):
    url = pg_server.new_url()
    Store.init(tmp_path / "ws", url).close()
    engine = sa.create_engine(url)
    with engine.begin() as con:
        con.exec_driver_sql("UPDATE alembic_version SET version_num = 'abc123'")
    engine.dispose()
    with pytest.raises(StoreError, match=rf"^catalog schema revision 'abc123' is newer than "
                       rf"this icl \({SCHEMA_REVISION}\); upgrade icl$"):
        Store.open(tmp_path / "ws", url)


OPEN = """
import sys
import alembic.command, store.orm  # imported before saying ready: the race is what follows
from store import Store
print("ready", flush=True)
with Store.open(sys.argv[1], sys.argv[2]) as st:
    print(len(st.attacks("icl")), st.experiment("base").data_fingerprint)
"""


def test_two_processes_opening_an_old_postgresql_catalog_at_once_upgrade_it_once(pg_server,
                                                                                 tmp_path):
    import psycopg

    from store.locking import CATALOG_WRITE_KEY

    url = pg_server.new_url()
    ws = _old_catalog(url, 2, tmp_path / "ws")
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn, autocommit=True) as holder:
        # Both find the old schema, then queue for the catalog's write lock.
        holder.execute("SELECT pg_advisory_lock(%s)", (CATALOG_WRITE_KEY,))
        procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(ws), url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
                 for _ in range(2)]
        try:
            assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
            time.sleep(1.0)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (CATALOG_WRITE_KEY,))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert (out, err) == ("2 fp\n", "")  # and Alembic printed nothing
    after = _snapshot(url)
    assert after["alembic_version"] == [{"version_num": SCHEMA_REVISION}]
    assert [(r["id"], r["eps"]) for r in after["attacks"]] == [(1, 0.125), (2, 0.25)]

