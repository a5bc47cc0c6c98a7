"""Losing the catalog loses nothing (issue 15): with `.icl/catalog.db` deleted or emptied,
`icl init`, `icl run` and the read-only commands refuse with one line naming
`icl verify --rebuild`, and never write over a shard or checkpoint; `icl verify --rebuild`
records the files again and `icl run` then finds the rounds done."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.kit import COMMON, icl
from tests.reliability.relkit import INIT, files, one_line, rows


def _lose(ws, how: str) -> None:
    db = ws / ".icl" / "catalog.db"
    if how == "deleted":
        db.unlink()
    elif how == "emptied":  # truncated to nothing
        db.write_bytes(b"")
    elif how == "rows-deleted":  # every experiment gone (rows cascade)
        con = sqlite3.connect(db)
        con.execute("PRAGMA foreign_keys=ON")
        with con:
            con.execute("DELETE FROM experiments")
        con.close()
    elif how == "whole-.icl":
        shutil.rmtree(ws / ".icl")
    for side in ("catalog.db-wal", "catalog.db-shm"):
        if how in ("deleted", "emptied"):
            (ws / ".icl" / side).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "emptied", "rows-deleted", "whole-.icl"])
def test_a_lost_catalog_refuses_every_command_and_overwrites_nothing(templates, tmp_path, how):
    ws = templates.copy("done", tmp_path / "ws")
    _lose(ws, how)
    before = files(ws / "experiments")
    commands = [[*INIT, "-w", ws], ["run", "-w", ws, "--rounds", "2", *COMMON]]
    if how != "whole-.icl":  # without .icl/ there is no workspace to find, only to init
        commands += [["status", "-w", ws], ["verify", "-w", ws],
                     ["synthesize", "-w", ws, "--round", "1", "--force", *COMMON]]
    for argv in commands:
        line = one_line(icl(*argv, code=3))
        assert f"run `icl verify --rebuild -w {ws}`" in line, (argv, line)
        assert "experiments/ holds the shards and checkpoints of 'icl'" in line, line
    assert files(ws / "experiments") == before
    assert (ws / ".icl" / "catalog.db").exists() == (how in ("emptied", "rows-deleted"))


@pytest.mark.parametrize("how", ["deleted", "emptied", "whole-.icl"])
def test_verify_rebuild_records_the_files_and_run_finds_the_rounds_done(templates, tmp_path,
                                                                       how):
    ws = templates.copy("done", tmp_path / "ws")
    query = ("SELECT s.round, s.version, s.active, s.path, s.sha256, s.count, s.seed, "
             "s.source_checkpoint_sha256 FROM shards s")
    shards = rows(ws, query)
    ckpts = rows(ws, "SELECT round, path, sha256, parent_sha256, config_hash FROM checkpoints")
    exp = rows(ws, "SELECT name, config_hash, method, data_fingerprint FROM experiments")
    _lose(ws, how)
    before = files(ws / "experiments")
    res = icl("verify", "--rebuild", "-w", ws)
    assert "rebuilt: experiment 'icl': 2 checkpoint(s) (rounds 0-1), 1 shard(s)" in res.stdout
    assert "workspace consistent" in res.stdout
    assert (rows(ws, query), rows(ws, "SELECT round, path, sha256, parent_sha256, config_hash "
                                      "FROM checkpoints")) == (shards, ckpts)
    assert rows(ws, "SELECT name, config_hash, method, data_fingerprint FROM experiments") \
        == exp
    icl("run", "-w", ws, "--rounds", "1", *COMMON)  # evaluates again what only the catalog had
    assert _artefacts(files(ws / "experiments")) == _artefacts(before)  # none rewritten
    assert ("test",) in rows(ws, "SELECT split FROM evaluations WHERE round = 1")


def _artefacts(found: dict) -> dict:
    return {k: v for k, v in found.items() if "/shards/" in k or "/checkpoints/" in k}
