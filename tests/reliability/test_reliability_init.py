"""A failed `icl init` leaves nothing to trip over: no experiment when C_0 was never saved
(the name can be tried again with other settings), and a C_0 saved without its evaluation
is evaluated by the retry."""

from __future__ import annotations

import json

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
