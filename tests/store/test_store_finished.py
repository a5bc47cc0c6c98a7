"""Catalog schema 7: each finished step's document, settings and file stamps
(``store.finished``), one row per (experiment, command, slot), read back by the plain-SQL
reader as the ORM wrote it; an older catalog gains the table empty; and what the cheap
file check sees and does not see."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from store import Store
from store.catalog import SCHEMA_VERSION
from store.finished import slot_key, stamp, unchanged

V2_DUMP = Path(__file__).parent / "data" / "catalog-v2.sql"
DOC = [{"split": "test", "error": 0.125, "reused": False}]


def test_a_slot_holds_the_last_document_recorded_for_it(store):
    f = store.root / "experiments" / "icl" / "a.bin"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"abc")
    files = [stamp(store.root, f, "ab" * 32)]
    assert files == [{"path": "experiments/icl/a.bin", "sha256": "ab" * 32, "size": 3,
                      "mtime_ns": f.stat().st_mtime_ns}]
    store.record_finished("icl", "evaluate", {"round": 3}, {"bins": 15}, files, DOC)
    store.record_finished("icl", "evaluate", {"round": 4}, {"bins": 15}, [], [])
    found = store.finished("icl", "evaluate", {"round": 3})
    assert (found.settings, found.files, found.document) == ({"bins": 15}, files, DOC)
    # Another run of the slot with other settings replaces it; other slots stay.
    store.record_finished("icl", "evaluate", {"round": 3}, {"bins": 10}, [], DOC[:0])
    assert store.finished("icl", "evaluate", {"round": 3}).settings == {"bins": 10}
    assert store.finished("icl", "evaluate", {"round": 4}).settings == {"bins": 15}
    assert store.finished("icl", "ood", {"round": 3}) is None
    store.forget_finished("icl", "evaluate", {"round": 4})
    assert store.finished("icl", "evaluate", {"round": 4}) is None
    # The ORM's row holds what the reader read.
    from sqlalchemy import select

    from store.orm import FinishedStep

    with store.catalog.read() as s:
        [row] = s.scalars(select(FinishedStep)).all()
        assert (row.command, row.slot, row.settings) == ("evaluate", slot_key({"round": 3}),
                                                         {"bins": 10})


def test_the_slot_key_does_not_depend_on_the_order_of_its_keys():
    assert slot_key({"round": 1, "eps": 0.5}) == slot_key({"eps": 0.5, "round": 1})


def test_the_cheap_check_sees_size_and_mtime_not_bytes_behind_them(tmp_path):
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"0123456789")
    files = [stamp(tmp_path, f)]
    assert files[0]["path"] == "ckpt.pt" and unchanged(tmp_path, files)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    assert not unchanged(tmp_path, files)
    f.write_bytes(b"0123456789!")  # rewritten, another size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not unchanged(tmp_path, files)
    f.write_bytes(b"9876543210")  # other bytes, same size, mtime set back: not seen here
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert unchanged(tmp_path, files)
    f.unlink()
    assert not unchanged(tmp_path, files)
    gone = [stamp(tmp_path, tmp_path / "never.png")]  # a missing file must stay missing
    assert gone[0]["size"] == -1 and unchanged(tmp_path, gone)
    (tmp_path / "never.png").write_bytes(b"")
    assert not unchanged(tmp_path, gone)


def test_a_file_outside_the_workspace_is_stamped_by_its_absolute_path(tmp_path):
    outside = tmp_path / "data" / "t10k-images-idx3-ubyte"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    assert stamp(tmp_path / "ws", outside)["path"] == str(outside)


def test_an_older_catalog_gains_the_table_empty(tmp_path):
    ws = tmp_path / "ws"
    (ws / ".icl" / "locks").mkdir(parents=True)
    (ws / "experiments").mkdir()
    db = ws / ".icl" / "catalog.db"
    with sqlite3.connect(db) as con:
        con.executescript(V2_DUMP.read_text())
    with Store.open(ws) as st:
        name = st.experiments()[0].name
        assert st.finished(name, "evaluate", {"round": 0}) is None
        st.record_finished(name, "evaluate", {"round": 0}, {}, [], DOC)
        assert st.finished(name, "evaluate", {"round": 0}).document == DOC
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)]
        assert con.execute("SELECT command FROM finished_steps").fetchall() == [("evaluate",)]


def test_restamp_trusts_a_touched_file_again_only_when_its_bytes_still_hash_the_same(store):
    from store import sha256_file

    f = store.root / "experiments" / "icl" / "b.bin"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"abc")
    files = [stamp(store.root, f, sha256_file(f))]
    store.record_finished("icl", "reclassify", {"round": 1}, {}, files, {"reused": False})
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert not unchanged(store.root, store.finished("icl", "reclassify", {"round": 1}).files)
    assert store.restamp_finished("icl", "reclassify", {"round": 1})
    assert unchanged(store.root, store.finished("icl", "reclassify", {"round": 1}).files)
    f.write_bytes(b"abd")  # other bytes: the old stamp stays, the row unanswerable
    assert not store.restamp_finished("icl", "reclassify", {"round": 1})
    assert not unchanged(store.root, store.finished("icl", "reclassify", {"round": 1}).files)
    assert not store.restamp_finished("icl", "evaluate", {"round": 1})  # no row
