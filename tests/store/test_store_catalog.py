"""Catalog schema 3: attacks keyed by method too, and catalogs of schema 1 and 2 upgraded in
place (their attack rows read as FGSM with no params) by the Alembic migrations of
``store/migrations``, whose head schema is the models'. PostgreSQL's side of the same is in
test_store_postgres.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from storekit import schema_differences

from store import AttackInfo, Store, StoreError
from store.catalog import KNOWN_REVISIONS, SCHEMA_REVISION, SCHEMA_VERSION, schema_revision
from tests.kit import child_env

V2_DUMP = Path(__file__).parent / "data" / "catalog-v2.sql"
HEAD = SCHEMA_REVISION  # "0007" today
NEWER = schema_revision(SCHEMA_VERSION + 1)  # what a newer icl's catalog is stamped at
PGD = {"steps": 40, "step_size": 0.01, "restarts": 1, "random_start": True}


def _old_workspace(tmp_path: Path, version: int) -> Path:
    """A workspace whose catalog is the version-2 dump (made by icl before schema 3),
    taken back to version 1 (no data fingerprint, no round metrics) if asked."""
    ws = tmp_path / "ws"
    (ws / ".icl" / "locks").mkdir(parents=True)
    (ws / "experiments").mkdir()
    with sqlite3.connect(ws / ".icl" / "catalog.db") as con:
        con.executescript(V2_DUMP.read_text())
        if version == 1:
            con.execute("ALTER TABLE experiments DROP COLUMN data_fingerprint")
            con.execute("DROP TABLE round_metrics")
            con.execute("UPDATE schema_version SET version = 1")
    return ws


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_catalog_is_upgraded_in_place_and_its_attacks_read_as_fgsm(tmp_path, version):
    ws = _old_workspace(tmp_path, version)
    with Store.open(ws) as st:
        old = st.attacks("icl")
        assert [(a.eps, a.method, a.params, a.counts["fool_self"]) for a in old] == [
            (0.125, "fgsm", None, 4), (0.25, "fgsm", None, 7)]
        assert [e.error for e in st.evaluations("icl")] == [0.25]
        assert st.experiment("base").data_fingerprint == (None if version == 1 else "cd" * 32)
        # The new key: a PGD record beside the FGSM one of the same eps, not replacing it.
        pgd = st.record_attack("icl", 1, "base", 1, 0.125, {"made": 10, "fool_self": 9},
                               method="pgd", params=PGD)
        assert (pgd.method, pgd.params) == ("pgd", PGD)
        assert sorted((a.eps, a.method) for a in st.attacks("icl")) == [
            (0.125, "fgsm"), (0.125, "pgd"), (0.25, "fgsm")]
    with sqlite3.connect(ws / ".icl" / "catalog.db") as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        cols = {r[1]: r for r in con.execute("PRAGMA table_info(attacks)")}
        assert cols["method"][3] == 1  # NOT NULL
    with Store.open(ws) as st:  # opening again changes nothing
        assert len(st.attacks("icl")) == 3


def test_fgsm_and_pgd_of_the_same_eps_coexist_and_each_replaces_only_itself(store):
    store.create_experiment("base", {"method": "baseline"})
    store.record_attack("icl", 1, "base", 1, 0.1, {"made": 10, "fool_self": 3})
    store.record_attack("icl", 1, "base", 1, 0.1, {"made": 10, "fool_self": 8},
                        method="pgd", params=PGD)
    again = store.record_attack("icl", 1, "base", 1, 0.1, {"made": 10, "fool_self": 9},
                                method="pgd", params={**PGD, "steps": 20})
    got = {a.method: a for a in store.attacks("icl")}
    assert set(got) == {"fgsm", "pgd"}
    assert got["fgsm"].counts["fool_self"] == 3 and got["fgsm"].params is None
    assert got["pgd"] == again and got["pgd"].params["steps"] == 20


def test_attack_info_keeps_its_positional_fields():
    # Callers that build or unpack AttackInfo positionally keep working: method and params
    # are the last fields, with defaults.
    a = AttackInfo("icl", 1, "base", 1, 0.1, {"made": 1}, None)
    assert (a.method, a.params) == ("fgsm", None)


def test_attack_method_and_params_are_checked(store):
    store.create_experiment("base", {"method": "baseline"})
    with pytest.raises(StoreError, match="1 to 16 characters"):
        store.record_attack("icl", 1, "base", 1, 0.1, {}, method="x" * 17)
    with pytest.raises(StoreError, match="not plain JSON"):
        store.record_attack("icl", 1, "base", 1, 0.1, {}, method="pgd", params={"s": {1}})
    assert store.attacks() == []


# ------------------------------------------------------------------ Alembic
def _db(ws: Path) -> Path:
    return ws / ".icl" / "catalog.db"


def _rows(db: Path, table: str, columns: list[str]) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid").fetchall()


def _columns(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = "
                                          "'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def test_the_migrations_are_one_revision_per_schema_version_up_to_the_head():
    from store.migrations import revisions

    assert revisions() == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    assert [schema_revision(v) for v in range(1, SCHEMA_VERSION + 1)] == revisions()
    assert SCHEMA_REVISION == revisions()[-1] and KNOWN_REVISIONS == set(revisions())


def test_a_fresh_catalog_is_made_at_the_alembic_head(tmp_path):
    from alembic.migration import MigrationContext

    with Store.init(tmp_path / "ws") as st:
        with st.engine.connect() as con:
            assert MigrationContext.configure(con).get_current_revision() == HEAD
    db = _db(tmp_path / "ws")
    assert _rows(db, "schema_version", ["version"]) == [(SCHEMA_VERSION,)]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    assert schema_differences(f"sqlite:///{db}") == []


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_catalog_is_stamped_then_migrated_to_the_head_and_keeps_every_row(tmp_path,
                                                                                 version):
    ws = _old_workspace(tmp_path, version)
    db = _db(ws)
    before = {t: (_columns(db, t), _rows(db, t, _columns(db, t))) for t in _tables(db)}
    assert "alembic_version" not in before  # made by an icl before Alembic
    with Store.open(ws):
        pass
    assert _rows(db, "schema_version", ["version"]) == [(SCHEMA_VERSION,)]
    assert _rows(db, "alembic_version", ["version_num"]) == [(HEAD,)]
    for table, (columns, rows) in before.items():
        if table == "attacks":  # re-created (new key): the same rows in order, new ids
            kept = [c for c in columns if c != "id"]
            assert _rows(db, table, kept) == [r[1:] for r in rows]
            assert _rows(db, table, ["id", "method", "params"]) == [(1, "fgsm", None),
                                                                   (2, "fgsm", None)]
        elif table != "schema_version":
            assert _rows(db, table, columns) == rows, table
    assert set(_tables(db)) == {*before, "alembic_version", "round_metrics",
                                "workspace_places", "reference_nets", "finished_steps"}


def test_the_migrated_schema_is_the_models_schema(tmp_path):
    # The proof that migrations and models agree: a version-1 catalog (raw SQL, as icl
    # 0.1 made it) migrated to the head has exactly the tables, columns, types, keys,
    # indexes and server defaults that create_all makes of the models.
    ws = _old_workspace(tmp_path, 1)
    url = f"sqlite:///{_db(ws)}"
    missing = {(d[0], d[2] if d[0] == "add_column" else None) for d in schema_differences(url)
               if isinstance(d, tuple)}
    assert {("add_column", "experiments"), ("add_column", "attacks"),
            ("add_table", None)} <= missing  # the comparison sees what version 1 lacks
    with Store.open(ws):
        pass
    assert schema_differences(url) == []


def test_the_migrations_alone_make_the_models_schema_from_nothing(tmp_path):
    from store.migrations import upgrade

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.begin() as con:
        upgrade(con)
    engine.dispose()
    assert schema_differences(f"sqlite:///{tmp_path / 'new.db'}") == []
    assert _rows(tmp_path / "new.db", "alembic_version", ["version_num"]) == [(HEAD,)]
    assert _rows(tmp_path / "new.db", "schema_version", ["version"]) == [(SCHEMA_VERSION,)]


def test_a_catalog_of_the_head_schema_made_before_alembic_is_read_as_is_and_stamped_by_init(
        tmp_path):
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
    db = _db(tmp_path / "ws")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")  # as every icl before Alembic left it
    with Store.open(tmp_path / "ws") as st:  # a read writes nothing
        assert [e.name for e in st.experiments()] == ["icl"]
    assert "alembic_version" not in _tables(db)
    with Store.init(tmp_path / "ws") as st:
        assert [e.name for e in st.experiments()] == ["icl"]
    assert _rows(db, "alembic_version", ["version_num"]) == [(HEAD,)]


def test_a_revision_this_icl_does_not_know_is_refused_in_one_line(tmp_path):
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
    with sqlite3.connect(_db(tmp_path / "ws")) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))  # a newer icl's
    for how in (Store.open, Store.init):
        with pytest.raises(StoreError, match=rf"^catalog schema revision '{NEWER}' is newer "
                           rf"than this icl \({HEAD}\); upgrade icl$"):
            how(tmp_path / "ws")
    done = subprocess.run([sys.executable, "-m", "icl_cli", "status", "-w", tmp_path / "ws"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: catalog schema revision '{NEWER}' is newer than this icl ({HEAD}); upgrade icl"]
    assert _rows(_db(tmp_path / "ws"), "alembic_version", ["version_num"]) == [(NEWER,)]


OPEN = """
import sys
import alembic.command, store.orm  # imported before saying ready: the race is what follows
from store import Store
print("ready", flush=True)
with Store.open(sys.argv[1]) as st:
    print(len(st.attacks("icl")), st.experiment("base").data_fingerprint)
"""


def test_two_processes_opening_an_old_catalog_at_once_upgrade_it_once(tmp_path):
    ws = _old_workspace(tmp_path, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = sqlite3.connect(_db(ws), isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")  # as icl keeps its catalog: readers go on
    holder.execute("BEGIN IMMEDIATE")  # both find the old schema, then queue for the lock
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(ws)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).parents[2]) for _ in range(2)]
    try:
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
        time.sleep(1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert (out, err) == (f"2 {'cd' * 32}\n", "")  # and Alembic printed nothing
    assert _rows(_db(ws), "alembic_version", ["version_num"]) == [(HEAD,)]
    assert _rows(_db(ws), "attacks", ["id", "eps"]) == [(1, 0.125), (2, 0.25)]


@pytest.mark.parametrize("url,logger,level", [
    ("sqlite:////tmp/x.db", "sqlalchemy.pool.impl.QueuePool", "error"),
    ("postgresql+psycopg://icl@localhost/icl", "sqlalchemy.pool.impl.QueuePool", "error"),
    ("postgresql+psycopg://icl@localhost/icl", "psycopg", "warning")])
def test_the_drivers_log_lines_stay_off_stderr(url, logger, level):
    """An interrupt that lands while a connection is closed or rolled back makes SQLAlchemy's
    pool ("Exception closing connection ..." and a traceback) or psycopg ("error ignored in
    rollback ...") log it, on stderr where nothing handles logging; the interrupt itself
    reaches icl and becomes the command's one line, so the catalog's engine keeps these
    records off stderr. (Nothing connects here: the engine is only made.)"""
    code = (f"import logging\nfrom store.orm import make_engine\nmake_engine({url!r})\n"
            f"logging.getLogger({logger!r}).{level}('Exception closing connection ...')\n"
            "logging.getLogger('elsewhere').error('another library')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), check=True)
    assert out.stderr == "another library\n"


def test_a_ctrl_c_during_a_write_comes_after_it(store):
    """Ctrl-C pressed while a catalog write runs is held until the transaction is
    committed and its connection is back in the pool, then raised: the row is there, and
    the next write (the interrupted step's own row, say) finds no lock left behind."""
    import signal

    def record(s):
        row = store.catalog.row(s, "icl")
        os.kill(os.getpid(), signal.SIGINT)  # lands here, mid-transaction
        time.sleep(0.05)
        row.parent_round = 7
        return "written"

    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        store.catalog.write(record)
    assert store.experiment("icl").parent_round == 7
    t0 = time.monotonic()
    store.record_metrics("icl", 1, {"x": 1.0})
    assert time.monotonic() - t0 < 5 and store.metrics("icl")[1] == {"x": 1.0}
