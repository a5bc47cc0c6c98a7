"""A failed `icl init` leaves nothing to trip over: no folder when the workspace could not
be made (a catalog that cannot be opened or reached), no experiment when C_0 was never
saved (the name can be tried again with other settings), and a C_0 saved without its
evaluation is evaluated by the retry."""

from __future__ import annotations

import json

import pytest

from tests.kit import COMMON, TINY, icl
from tests.reliability.relkit import execute, one_line, rows


def test_a_diverged_init_leaves_no_experiment_and_the_name_is_free(tmp_path):
    ws = tmp_path / "ws"
    bad = icl("init", "-w", ws, "-e", "y", *TINY, "--lr", "1e9", *COMMON, code=3)
    assert "diverged" in one_line(bad)
    assert rows(ws, "SELECT name FROM experiments") == []
    assert not (ws / "experiments" / "y").exists()
    icl("init", "-w", ws, "-e", "y", *TINY, "--lr", "0.01", *COMMON)  # other settings: fine
    assert rows(ws, "SELECT name FROM experiments") == [("y",)]


def test_val_size_leaving_no_training_images_is_refused_as_that(tmp_path):
    res = icl("init", "-w", tmp_path / "ws", "-e", "x", "--arch", "tiny", "--val-size", 6000,
              "--init-epochs", 1, *COMMON, code=3)
    assert "--val-size 6000 leaves no training images" in one_line(res)
    assert not (tmp_path / "ws").exists()


def test_a_retry_evaluates_a_c0_saved_without_its_evaluation(tmp_path):
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "-e", "x", *TINY, *COMMON)
    execute(ws, "DELETE FROM evaluations")  # as if init was cut short after saving C_0
    out = json.loads(icl("init", "-w", ws, "-e", "x", *TINY, *COMMON, "--json").stdout)
    assert not out["reused"] and {e["split"] for e in out["evaluations"]} == {"test", "val"}
    assert rows(ws, "SELECT count(*) FROM evaluations") == [(2,)]
    again = json.loads(icl("init", "-w", ws, "-e", "x", *TINY, *COMMON, "--json").stdout)
    assert again["reused"]


def _catalogs(tmp_path, pg_server):
    """Catalog URLs an `icl init` cannot use: a SQLite file in a folder that does not
    exist, a PostgreSQL database that does not exist on a running server."""
    return {"sqlite in no folder": f"sqlite:///{tmp_path}/no/such/folder/catalog.db",
            "missing postgresql database": pg_server.url("no_such_database")}


@pytest.mark.parametrize("what", ["sqlite in no folder", "missing postgresql database"])
@pytest.mark.parametrize("where", ["new", "new/and/deeper"])
def test_init_with_a_catalog_it_cannot_use_leaves_no_folder(tmp_path, pg_server, what,
                                                            where):
    url = _catalogs(tmp_path, pg_server)[what]
    res = icl("init", "-w", tmp_path / where, "-e", "x", *TINY, *COMMON, code=3,
              env={"ICL_CATALOG_URL": url})
    assert "catalog" in one_line(res)
    assert not (tmp_path / "new").exists()


def test_init_in_an_existing_folder_leaves_it_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    icl("init", "-w", folder, "-e", "x", *TINY, *COMMON, code=3,
        env={"ICL_CATALOG_URL": f"sqlite:///{tmp_path}/no/such/folder/catalog.db"})
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
