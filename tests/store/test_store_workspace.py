"""Workspace discovery, names, atomic writes, opening and experiments."""

from __future__ import annotations

import sqlite3

import pytest

from store import (
    ConflictError,
    ExperimentNotFound,
    NotAWorkspace,
    Store,
    StoreError,
    atomic_write,
    find_workspace,
    validate_name,
)
from store.catalog import SCHEMA_VERSION


def test_find_workspace_from_a_subfolder(tmp_path, monkeypatch):
    Store.init(tmp_path / "ws").close()
    sub = tmp_path / "ws" / "a" / "b"
    sub.mkdir(parents=True)
    assert find_workspace(cwd=sub) == (tmp_path / "ws").resolve()
    monkeypatch.chdir(sub)
    assert find_workspace() == (tmp_path / "ws").resolve()
    assert find_workspace(explicit=tmp_path / "ws") == (tmp_path / "ws").resolve()


def test_find_workspace_env_and_errors(tmp_path, monkeypatch):
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAWorkspace, match=r"\(or any parent\).*run `icl init` here"):
        find_workspace(cwd=tmp_path / "plain")
    with pytest.raises(NotAWorkspace):
        find_workspace(explicit=tmp_path / "plain")
    Store.init(tmp_path / "ws").close()
    monkeypatch.setenv("ICL_WORKSPACE", str(tmp_path / "ws"))
    assert find_workspace(cwd=tmp_path / "plain") == (tmp_path / "ws").resolve()
    with pytest.raises(NotAWorkspace):
        Store.open(tmp_path / "plain")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".", "..", "", "-x", "a" * 65, "x y", "é"])
def test_bad_names_rejected(store, bad):
    with pytest.raises(StoreError):
        validate_name(bad)
    with pytest.raises(StoreError):
        store.create_experiment(bad, {})


def test_good_names(store):
    assert validate_name("mnist-icl_1.v2") == "mnist-icl_1.v2"
    assert validate_name("a" * 64)


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "d" / "f.bin"

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise ValueError("disk on fire")

    with pytest.raises(ValueError):
        atomic_write(target, boom)
    assert list(target.parent.iterdir()) == []

    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
    assert target.read_bytes() == b"old"


def test_a_full_disk_during_a_write_is_one_line_and_leaves_nothing(tmp_path):
    import errno

    from store.workspace import DiskFull

    target = tmp_path / "d" / "f.bin"

    def enospc(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(DiskFull) as info:
        atomic_write(target, enospc)
    msg = str(info.value)
    assert msg.startswith(f"no space left on the device of {target.parent} (")
    assert "KiB free): free some space, then run the command again" in msg
    assert "\n" not in msg and isinstance(info.value, StoreError)  # one line; exit 3 today
    assert list(target.parent.iterdir()) == []


def test_a_disk_under_1_mib_free_is_full_before_anything_is_written(tmp_path, monkeypatch):
    """HDF5 crashes (segfault at exit) when it meets ENOSPC, so a write is refused up
    front when the file system has under 1 MiB left."""
    from store import workspace
    from store.workspace import DiskFull

    monkeypatch.setattr(workspace, "free_bytes", lambda folder: 512 * 1024)
    called = []
    with pytest.raises(DiskFull, match=r"\(512 KiB free\)"):
        atomic_write(tmp_path / "f.bin", called.append)
    assert called == [] and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(workspace, "free_bytes", lambda folder: 2 << 20)
    atomic_write(tmp_path / "f.bin", lambda tmp: tmp.write_bytes(b"ok"))
    assert (tmp_path / "f.bin").read_bytes() == b"ok"


@pytest.mark.parametrize("free", [512 * 1024, 10 << 30])
def test_no_space_tells_a_full_disk_from_other_failures(tmp_path, monkeypatch, free):
    import errno

    from store import CatalogUnusable, workspace
    from store.workspace import no_space

    monkeypatch.setattr(workspace, "free_bytes", lambda folder: free)
    low = free < (1 << 20)
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    wrapped = CatalogUnusable("cannot use the workspace catalog: disk I/O error")
    h5py_text = RuntimeError("Can't decrement id ref count (file write failed: errno = 28, "
                             "error message = 'No space left on device')")
    for exc, full in [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (sqlite_full, True),
        (h5py_text, True),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
         low),  # torch says nothing of the cause: the free space does
        (wrapped, low),  # SQLite's "disk I/O error" when its WAL cannot grow
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (StoreError("invalid experiment name 'a/b'"), False),
        (ValueError("diverged"), False),
    ]:
        assert (no_space(tmp_path, exc) is not None) is full, (exc, free)
    try:  # a cause further down the chain counts too
        try:
            raise sqlite_full
        except sqlite3.OperationalError as inner:
            raise StoreError("cannot use the workspace catalog") from inner
    except StoreError as outer:
        assert no_space(tmp_path, outer) is not None
    assert (no_space(tmp_path) is not None) is low


def test_init_is_idempotent_and_open_checks_schema(tmp_path):
    st = Store.init(tmp_path / "ws")
    st.create_experiment("icl", {"a": 1})
    st.close()
    st = Store.init(tmp_path / "ws")
    assert [e.name for e in st.experiments()] == ["icl"]
    st.close()
    db = tmp_path / "ws" / ".icl" / "catalog.db"
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=rf"catalog schema {SCHEMA_VERSION + 1} is newer than "
                       rf"this icl "
                       rf"\({SCHEMA_VERSION}\); upgrade icl$"):
        Store.open(tmp_path / "ws")


def test_open_upgrades_a_version_1_catalog_and_keeps_its_rows(tmp_path):
    st = Store.init(tmp_path / "ws")
    st.create_experiment("icl", {"a": 1})
    st.close()
    db = tmp_path / "ws" / ".icl" / "catalog.db"
    with sqlite3.connect(db) as con:  # what icl 0.1's first schema held
        con.execute("ALTER TABLE experiments DROP COLUMN data_fingerprint")
        con.execute("DROP TABLE round_metrics")
        con.execute("DROP TABLE workspace_places")  # schema 5's
        con.execute("DROP TABLE reference_nets")
        con.execute("ALTER TABLE steps DROP COLUMN environment")  # schema 6's
        con.execute("DROP TABLE finished_steps")  # schema 7's
        con.execute("UPDATE schema_version SET version = 1")

    st = Store.open(tmp_path / "ws")
    assert st.experiment("icl").data_fingerprint is None
    st.record_metrics("icl", 1, {"grad_norm_max": 3.5, "pool_logit_max": float("nan")})
    assert st.metrics("icl") == {1: {"grad_norm_max": 3.5, "pool_logit_max": None}}
    st.create_experiment("icl", {"a": 1}, data_fingerprint="ab" * 32)  # kept where none was
    assert st.experiment("icl").data_fingerprint == "ab" * 32
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)]


def test_experiments(store):
    same = store.create_experiment("icl", {"method": "icl", "seed": 0})
    assert same.name == "icl" and same.method == "icl"
    with pytest.raises(ConflictError, match="another config"):
        store.create_experiment("icl", {"method": "icl", "seed": 1})
    b = store.create_experiment("b", {"method": "baseline"}, parent="icl", parent_round=2)
    assert (b.parent, b.parent_round) == ("icl", 2)
    assert store.experiment().name == "b"  # the most recently created
    assert store.experiment("icl").config == {"method": "icl", "seed": 0}
    with pytest.raises(ExperimentNotFound, match="known: b, icl"):
        store.experiment("nope")
    with pytest.raises(ExperimentNotFound):
        store.create_experiment("c", {}, parent="nope")
    assert [e.name for e in store.experiments()] == ["icl", "b"]
    assert (store.root / "experiments" / "b" / "shards").is_dir()


def test_no_experiment_yet(tmp_path):
    with Store.init(tmp_path / "ws") as st, pytest.raises(ExperimentNotFound, match="icl init"):
        st.experiment()


def test_a_rounds_evaluations_are_recorded_all_or_none(store):
    """Every split of a round and its calibration in one transaction: a write that fails
    part-way (here on its second split) leaves no split recorded, not the first alone."""
    with pytest.raises(ValueError):
        store.record_evaluations("icl", 1, [("test", 0.5, [0.5] * 10, 100),
                                            ("val", "not a number", [0.5] * 10, 50)],
                                 {"test_nll": 0.75})
    assert store.evaluations("icl") == [] and store.metrics("icl") == {}
    made = store.record_evaluations("icl", 1, [("test", 0.5, [0.5] * 10, 100),
                                               ("val", 0.25, [0.25] * 10, 50)],
                                    {"test_nll": 0.75, "val_nll": 0.5})
    assert [(e.split, e.error, e.n) for e in made] == [("test", 0.5, 100), ("val", 0.25, 50)]
    assert [(e.split, e.error) for e in store.evaluations("icl")] == [("test", 0.5),
                                                                       ("val", 0.25)]
    assert store.metrics("icl") == {1: {"test_nll": 0.75, "val_nll": 0.5}}


def test_figure_path(store):
    p = store.figure_path("icl", "round-0003/grid.png")
    assert p == store.root / "experiments/icl/figures/round-0003/grid.png"
    assert p.parent.is_dir()
    for bad in ["../x.png", "/etc/x.png", "a/../../x.png", ""]:
        with pytest.raises(StoreError):
            store.figure_path("icl", bad)


def test_results_replace_on_rerun(store):
    store.record_evaluation("icl", 1, "test", 0.5, [0.1] * 10, 100)
    e = store.record_evaluation("icl", 1, "test", 0.25, [0.2] * 10, 100)
    store.record_evaluation("icl", 1, "val", 0.3, [0.3] * 10, 50)
    assert [(x.split, x.error) for x in store.evaluations("icl")] == [("test", 0.25), ("val", 0.3)]
    assert e.per_class == [0.2] * 10
    store.create_experiment("base", {"method": "baseline"})
    store.record_attack("icl", 1, "base", 1, 0.125, {"made": 10, "fool_self": 3})
    a = store.record_attack("icl", 1, "base", 1, 0.125, {"made": 10, "fool_self": 4})
    assert store.attacks() == [a] and a.counts["fool_self"] == 4
