"""Losing the catalog loses nothing (issue 15): a missing or emptied catalog beside
experiments' files refuses every open and init, a file on disk is never overwritten by a
catalog that does not know it, and ``Store.rebuild`` records the files again from their own
metadata."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

import pytest
import torch

from store import CatalogMissing, ConflictError, Store

EXP = {"method": "icl", "seed": 0, "train": {"lr": 0.01}}


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(3, 2, generator=g)}, "optimizer": None, "config": EXP}


def _rows(st: Store) -> dict:
    """Everything the files can tell again, per experiment (no row ids, no evaluations)."""
    out = {}
    for e in st.experiments():
        out[e.name] = {
            "experiment": (e.config, e.config_hash, e.method, e.parent, e.parent_round,
                           e.data_fingerprint),
            "shards": [(s.round, s.version, s.active, s.path, s.sha256, s.count,
                        s.sampler_config, s.seed, s.source_checkpoint) for s in st.shards(e.name)],
            "checkpoints": [(c.round, c.path, c.sha256, c.parent_sha256, c.config_hash)
                            for c in st.checkpoints(e.name)],
            "stale": st.stale_rounds(e.name),
        }
    return out


@pytest.fixture
def ws(tmp_path, make_arrays):
    """A workspace with 'base' (C_0) and 'icl' (--from base:0; C_0, C_1, round 1 in two
    versions, round 2's shard), closed, and what its catalog said."""
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("base", {"method": "baseline"}, data_fingerprint="ab" * 32)
        b0 = st.save_checkpoint("base", 0, {**_state(9), "config": {"method": "baseline"}})
        st.create_experiment("icl", EXP, parent="base", parent_round=0,
                             data_fingerprint="cd" * 32)
        c0 = st.save_checkpoint("icl", 0, _state(0), parent=b0)
        for seed in (1, 2):
            st.write_shard("icl", 1, make_arrays(seed=seed), {
                "seed": seed, "sampler_config": {"lr": 0.05}, "source_checkpoint": c0.sha256})
        c1 = st.save_checkpoint("icl", 1, _state(1), parent=c0)
        st.write_shard("icl", 2, make_arrays(n=5), {"seed": 3, "sampler_config": {},
                                                    "source_checkpoint": c1.sha256})
        st.record_evaluation("icl", 1, "test", 0.25, [0.25] * 10, 100)
        before = _rows(st)
    return tmp_path / "ws", before


def _files(ws) -> dict:
    return {p.relative_to(ws).as_posix(): p.read_bytes()
            for p in sorted((ws / "experiments").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["deleted", "emptied", "rows-deleted"])
def test_a_lost_catalog_refuses_open_and_init_and_writes_nothing(ws, how):
    root, _ = ws
    db = root / ".icl" / "catalog.db"
    if how == "deleted":
        db.unlink()
    elif how == "emptied":
        db.write_bytes(b"")
        for side in (".icl/catalog.db-wal", ".icl/catalog.db-shm"):
            (root / side).unlink(missing_ok=True)
    else:
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("DELETE FROM experiments")
    files = _files(root)
    state = {"deleted": "is missing", "emptied": "is empty", "rows-deleted": "is empty"}[how]
    want = (f"the catalog .icl/catalog.db {state}, but experiments/ holds the shards and "
            f"checkpoints of 'base', 'icl'; nothing was written: run "
            f"`icl verify --rebuild -w {root}` to record them again from the files")
    for attempt in (Store.open, Store.init):
        with pytest.raises(CatalogMissing) as exc:
            attempt(root)
        assert str(exc.value) == want
    assert _files(root) == files
    assert db.exists() == (how != "deleted")  # init did not make a new catalog


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_rebuild_records_every_file_as_it_was(ws, how):
    root, before = ws
    db = root / ".icl" / "catalog.db"
    if how == "deleted":
        db.unlink()
    else:
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("DELETE FROM experiments")
    files = _files(root)
    with Store.rebuild(root) as st:
        assert st.rebuilt == ["experiment 'base': 1 checkpoint(s) (round 0), 0 shard(s)",
                              "experiment 'icl': 2 checkpoint(s) (rounds 0-1), 3 shard(s)"]
        assert _rows(st) == before
        assert st.evaluations() == []  # only the catalog held those: measured again
        report = st.verify()
        assert report.ok and report.orphans == [] and report.rebuilt == st.rebuilt
        st.load_checkpoint(st.checkpoint("icl", 1))  # rows and files agree
        st.read_shard(st.active_shard("icl", 1))
    assert _files(root) == files
    with Store.open(root) as st:  # an ordinary workspace again
        assert _rows(st) == before and st.verify().rebuilt == []
    with Store.rebuild(root) as st:  # nothing left to record
        assert st.rebuilt == [] and _rows(st) == before


def test_rebuild_keeps_known_experiments_and_reads_old_checkpoints(ws):
    root, before = ws
    path = root / "experiments/icl/checkpoints/round-0001.pt"
    state = torch.load(path, weights_only=True)
    del state["catalog"]  # a checkpoint written before the store kept its record there
    state["inputs"] = {"parent": before["icl"]["checkpoints"][0][2]}  # as train.py records
    torch.save(state, path)
    with sqlite3.connect(root / ".icl" / "catalog.db") as con:
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("DELETE FROM experiments WHERE name = 'icl'")
    with Store.rebuild(root) as st:
        assert [line.split(":")[0] for line in st.rebuilt] == ["experiment 'icl'"]
        got = _rows(st)
        assert got["base"] == before["base"]
        c1 = st.checkpoint("icl", 1)
        assert c1.parent_sha256 == before["icl"]["checkpoints"][0][2]  # from its inputs
        assert got["icl"]["shards"] == before["icl"]["shards"]


def test_an_unreadable_file_is_left_out_and_named(ws):
    root, _ = ws
    (root / ".icl" / "catalog.db").unlink()
    (root / "experiments/icl/shards/round-0002.v1.h5").write_bytes(b"not hdf5")
    (root / "experiments/lost/shards").mkdir(parents=True)
    (root / "experiments/lost/shards/round-0001.v1.h5").write_bytes(b"x")
    with Store.rebuild(root) as st:
        icl = next(line for line in st.rebuilt if line.startswith("experiment 'icl'"))
        assert "2 shard(s); left out shard experiments/icl/shards/round-0002.v1.h5 is " \
               "not a readable icl shard" in icl
        assert "experiment 'lost' not recorded: no readable checkpoint tells its config" in \
            " ".join(st.rebuilt)
        assert [e.name for e in st.experiments()] == ["base", "icl"]
        assert st.verify().orphans == [root / "experiments/icl/shards/round-0002.v1.h5",
                                       root / "experiments/lost/shards/round-0001.v1.h5"]


def test_a_checkpoint_older_than_its_experiment_row_is_never_overwritten(store):
    path = store.root / "experiments/icl/checkpoints/round-0000.pt"
    path.write_bytes(b"someone's C_0")
    old = time.time() - 3600
    os.utime(path, (old, old))
    for replace in (False, True):
        with pytest.raises(ConflictError, match=r"experiments/icl/checkpoints/round-0000\.pt "
                           r"is on disk but not in the catalog .* run `icl verify --rebuild`"):
            store.save_checkpoint("icl", 0, _state(0), replace=replace)
    assert path.read_bytes() == b"someone's C_0" and store.checkpoints("icl") == []


def test_a_crash_leftover_newer_than_the_row_is_replaced_as_before(store):
    # Killed between rename and record: the file is this catalog's own unfinished write.
    path = store.root / "experiments/icl/checkpoints/round-0000.pt"
    path.write_bytes(b"half a step")
    info = store.save_checkpoint("icl", 0, _state(0))
    assert info.path == path and store.load_checkpoint(info)["round"] == 0


def test_checkpoints_carry_their_catalog_record(store):
    c0 = store.save_checkpoint("icl", 0, _state(0))
    c1 = store.save_checkpoint("icl", 1, _state(1), parent=c0)
    rec = store.load_checkpoint(c1)["catalog"]
    assert rec["parent"] == {"experiment": "icl", "round": 0, "sha256": c0.sha256}
    assert rec["experiment"]["config"] == {"method": "icl", "seed": 0}
    # No timestamp in it: the same training writes the same bytes.
    again = store.save_checkpoint("icl", 1, _state(1), parent=c0, replace=True)
    assert again.sha256 == c1.sha256


def test_a_folder_whose_icl_folder_is_gone_points_to_rebuild(ws, monkeypatch):
    from store import find_workspace

    root, before = ws
    shutil.rmtree(root / ".icl")
    for where in ({"explicit": root}, {"cwd": root}):  # -w, or the current folder
        with pytest.raises(CatalogMissing, match=r"catalog .icl/catalog.db is missing, but "
                           r"experiments/ holds .* `icl verify --rebuild -w "):
            find_workspace(**where)
    monkeypatch.chdir(root)
    with Store.rebuild() as st:  # the current folder, found without .icl/
        assert st.root == root and _rows(st) == before
