"""Catalog schema 3: attacks keyed by method too, and catalogs of schema 1 and 2 upgraded in
place (their attack rows read as FGSM with no params)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store import AttackInfo, Store, StoreError

V2_DUMP = Path(__file__).parent / "data" / "catalog-v2.sql"
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
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
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
