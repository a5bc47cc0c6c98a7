"""One catalog serves one workspace.

Two workspaces given the same ``ICL_CATALOG_URL`` used to read each other's experiments as
their own (and ``icl reclassify --force`` in one re-recorded the other's checkpoint hash,
failing its intact file's sha256 check). The catalog now records the workspace it serves
(its id in ``.icl/workspace-id`` and the folders it was seen at): another workspace is
refused in one line (exit 3), a moved one works again after ``icl verify --adopt``, and a
copy (``cp -a``) is refused until it gets a catalog of its own. The workspace's own SQLite
catalog is untouched by all of it. PostgreSQL cases, and the same with a SQLite catalog
file outside the workspaces (no server needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from store import Store
from store.errors import CatalogOfAnotherWorkspace
from tests import kit
from tests.kit import Result


def _state(seed: int) -> dict:
    return {"model": {"w": torch.full((2,), float(seed))}, "config": {"method": "icl"}}


@pytest.fixture(params=["postgresql", "sqlite file"])
def url(request, tmp_path):
    """A catalog outside the workspaces: a fresh PostgreSQL database, or a SQLite file."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_server").new_url()
    return f"sqlite:///{tmp_path / 'shared' / 'catalog.db'}"


def _workspace(ws: Path, url: str, name: str = "a") -> str:
    """A workspace at ``ws`` on the catalog ``url`` with experiment ``name`` and its C_0;
    returns C_0's sha256."""
    ws.parent.mkdir(parents=True, exist_ok=True)
    (Path(url.removeprefix("sqlite:///")).parent.mkdir(exist_ok=True)
     if url.startswith("sqlite") else None)
    with Store.init(ws, url) as st:
        st.create_experiment(name, {"method": "icl"})
        return st.save_checkpoint(name, 0, _state(0)).sha256


def icl(*argv, url: str | None = None) -> Result:
    """``icl ARGV`` (in this process) with ``ICL_CATALOG_URL=url``, or none set."""
    return kit.icl(*argv, code=None, env={"ICL_CATALOG_URL": url})


def _one_line(done: Result) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_second_workspace_on_the_same_catalog_is_refused(tmp_path, url):
    sha = _workspace(tmp_path / "one", url, "a")
    with pytest.raises(CatalogOfAnotherWorkspace, match=r"belongs to another workspace "
                       rf"\(last seen at {tmp_path / 'one'}\)"):
        Store.init(tmp_path / "two", url)
    assert not (tmp_path / "two").exists()  # a refused init makes nothing
    # A workspace of its own (its SQLite catalog), then pointed at the first one's.
    Store.init(tmp_path / "two").close()
    with pytest.raises(CatalogOfAnotherWorkspace, match="belongs to another workspace"):
        Store.open(tmp_path / "two", url)
    for argv in (["status"], ["reclassify", "-e", "a", "--round", "0", "--force",
                              "--no-mlflow"]):
        done = icl(*argv, "-w", tmp_path / "two", url=url)
        assert done.code == 3, (argv, done.stderr)
        assert "belongs to another workspace" in _one_line(done)
    with Store.open(tmp_path / "one", url) as st:  # the first is untouched, and intact
        assert st.checkpoint("a", 0).sha256 == sha and st.verify().ok


def test_a_moved_workspace_works_again_after_verify_adopt(tmp_path, url):
    sha = _workspace(tmp_path / "old", url)
    (tmp_path / "old").rename(tmp_path / "new")
    with pytest.raises(CatalogOfAnotherWorkspace, match=rf"serves this workspace at "
                       rf"{tmp_path / 'old'}, not at {tmp_path / 'new'}: .* run `icl verify "
                       rf"--adopt -w {tmp_path / 'new'}` once"):
        Store.open(tmp_path / "new", url)
    done = icl("status", "-w", tmp_path / "new", url=url)
    assert done.code == 3 and "icl verify --adopt" in _one_line(done)
    done = icl("verify", "--adopt", "--no-mlflow", "-w", tmp_path / "new", url=url)
    assert done.code == 0, done.stderr
    assert "now serves the catalog from" in done.stdout
    assert icl("status", "-w", tmp_path / "new", url=url).code == 0
    with Store.open(tmp_path / "new", url) as st:
        assert st.checkpoint("a", 0).sha256 == sha and st.verify().ok


def test_a_copy_is_refused_until_it_has_a_catalog_of_its_own(tmp_path, url):
    _workspace(tmp_path / "ws", url)
    shutil.copytree(tmp_path / "ws", tmp_path / "copy", symlinks=True)  # cp -a
    with pytest.raises(CatalogOfAnotherWorkspace, match=rf"{tmp_path / 'copy'} is a copy of "
                       rf"the workspace at {tmp_path / 'ws'}"):
        Store.open(tmp_path / "copy", url)
    done = icl("verify", "--adopt", "-w", tmp_path / "copy", url=url)
    assert done.code == 3 and "is a copy of" in _one_line(done)
    with Store.open(tmp_path / "ws", url) as st:  # the original goes on
        assert st.verify().ok
    # Its own catalog: the workspace's own SQLite file, rebuilt from its files.
    with Store.rebuild(tmp_path / "copy") as st:
        assert [e.name for e in st.experiments()] == ["a"]
    with Store.open(tmp_path / "copy") as st:
        assert st.verify().ok


def test_a_copy_with_a_copy_of_the_database_is_a_workspace_of_its_own(pg_server, tmp_path):
    url = pg_server.new_url()
    _workspace(tmp_path / "ws", url)
    shutil.copytree(tmp_path / "ws", tmp_path / "copy", symlinks=True)
    clone = pg_server.clone(url)  # CREATE DATABASE ... TEMPLATE: a catalog of its own
    with Store.open(tmp_path / "copy", clone) as st:
        st.create_experiment("b", {"method": "baseline"})
    with Store.open(tmp_path / "ws", url) as st:
        assert [e.name for e in st.experiments()] == ["a"]
    with pytest.raises(CatalogOfAnotherWorkspace, match="is a copy of"):
        Store.open(tmp_path / "copy", url)  # but not the original's database


def test_an_old_server_catalog_is_claimed_by_the_first_workspace_that_opens_it(tmp_path,
                                                                               url):
    _workspace(tmp_path / "ws", url)
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as con:  # as schema 4 left it: no workspace recorded
        con.exec_driver_sql("DELETE FROM workspace_places")
    engine.dispose()
    (tmp_path / "ws" / ".icl" / "workspace-id").unlink()
    with Store.open(tmp_path / "ws", url) as st:
        assert [e.name for e in st.experiments()] == ["a"]
    assert (tmp_path / "ws" / ".icl" / "workspace-id").is_file()
    Store.init(tmp_path / "other").close()
    with pytest.raises(CatalogOfAnotherWorkspace):
        Store.open(tmp_path / "other", url)


def test_the_workspaces_own_catalog_records_no_owner(tmp_path):
    import sqlite3

    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("a", {"method": "icl"})
    shutil.copytree(tmp_path / "ws", tmp_path / "copy", symlinks=True)
    (tmp_path / "ws").rename(tmp_path / "moved")
    for ws in ("moved", "copy"):
        with Store.open(tmp_path / ws) as st:
            assert [e.name for e in st.experiments()] == ["a"]
        assert not (tmp_path / ws / ".icl" / "workspace-id").exists()
        with sqlite3.connect(tmp_path / ws / ".icl" / "catalog.db") as con:
            assert con.execute("SELECT COUNT(*) FROM workspace_places").fetchone() == (0,)
