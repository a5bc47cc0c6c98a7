"""Catalog schema 6: each step's ``environment`` (where it ran), recorded through the
describer the steps' layer gives (``store.steplog.describe_steps_with``), read back the same
by both read paths, and NULL for the steps of a catalog made before it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store import Store
from store.catalog import SCHEMA_VERSION
from store.steplog import _describe, describe_steps_with

V2_DUMP = Path(__file__).parent / "data" / "catalog-v2.sql"
WHERE = {"device": "cpu", "device_model": "a CPU", "torch": "9.9",
         "determinism": {"cudnn_benchmark": False}}


@pytest.fixture
def describer():
    """This process's describer for the test, the one before it put back after."""
    before = list(_describe)
    yield describe_steps_with
    _describe[:] = before


def test_a_step_records_what_the_describer_says_of_its_config(store, describer):
    seen = []
    describer(lambda config: seen.append(config) or {**WHERE, "device": config["device"]})
    with store.step("icl", "synthesize", 1, {"device": "cuda:0", "count": 3}):
        pass
    [info] = store.steps("icl")
    assert info.environment == {**WHERE, "device": "cuda:0"}
    assert seen == [{"device": "cuda:0", "count": 3}]
    # The other read path (the ORM's row) holds the same JSON.
    from store.orm import Step

    with store.catalog.read() as s:
        assert s.get(Step, info.id).environment == info.environment


def test_without_a_describer_or_when_it_fails_the_step_runs_and_records_none(store,
                                                                           describer):
    describer(None)
    with store.step("icl", "reclassify", 1, {}):
        pass

    def broken(config):
        raise RuntimeError("no GPU query here")

    describer(broken)
    with store.step("icl", "reclassify", 2, {}):
        pass
    assert [(s.round, s.state, s.environment) for s in store.steps("icl")] == [
        (1, "ok", None), (2, "ok", None)]


def test_an_older_catalog_gains_the_column_and_its_steps_read_not_recorded(tmp_path,
                                                                           describer):
    ws = tmp_path / "ws"
    (ws / ".icl" / "locks").mkdir(parents=True)
    (ws / "experiments").mkdir()
    db = ws / ".icl" / "catalog.db"
    with sqlite3.connect(db) as con:
        con.executescript(V2_DUMP.read_text())
        con.execute("INSERT INTO steps (experiment_id, name, round, config, config_hash, "
                    "started_at, state) SELECT id, 'synthesize', 1, '{}', 'ab', "
                    "'2026-01-01 00:00:00', 'ok' FROM experiments WHERE name = 'icl'")
    describer(lambda config: WHERE)
    with Store.open(ws) as st:
        [old] = st.steps("icl")
        assert (old.name, old.environment) == ("synthesize", None)
        with st.step("icl", "synthesize", 2, {}):
            pass
        assert [s.environment for s in st.steps("icl")] == [None, WHERE]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)]
        assert "environment" in [r[1] for r in con.execute("PRAGMA table_info(steps)")]
