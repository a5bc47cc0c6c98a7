"""Rounds downstream of a replaced shard or checkpoint are stale: `icl status`, `icl verify`
and `icl run` say so, and `icl run` redoes them (and evaluates again a round recorded on
one split only); `icl verify --repair` removes only the temporaries icl itself made, and
says what it removed."""

from __future__ import annotations

import json

from tests.kit import COMMON, TINY, icl
from tests.reliability.relkit import execute, rows


def _status(ws) -> dict:
    return {e["experiment"]: e for e in json.loads(icl("status", "-w", ws, "--json").stdout)[
        "experiments"]}


def _ws(tmp_path):
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", *TINY, *COMMON)
    icl("run", "-w", ws, "--rounds", "2", *COMMON)
    assert _status(ws)["icl"]["stale"] == {}
    return ws


def test_a_replaced_shard_makes_its_round_and_the_later_ones_stale_until_run(tmp_path):
    ws = _ws(tmp_path)
    icl("synthesize", "-w", ws, "--round", "1", "--force", *COMMON)
    stale = _status(ws)["icl"]["stale"]
    assert sorted(stale) == ["1", "2"] and "replaced after it was trained" in stale["1"]
    verify = icl("verify", "-w", ws)
    assert "stale: round 1 of 'icl'" in verify.stdout
    assert "2 stale round(s)" in verify.stdout
    # run redoes round 1 (retrained on shard v2), then round 2 (a new shard, retrained).
    rows = json.loads(icl("run", "-w", ws, "--rounds", "2", *COMMON, "--json").stdout)
    assert [r["ran"] for r in rows] == [[], ["reclassify", "evaluate"],
                                        ["synthesize", "reclassify", "evaluate"]]
    assert _status(ws)["icl"]["stale"] == {}
    assert "stale" not in icl("verify", "-w", ws).stdout
    again = json.loads(icl("run", "-w", ws, "--rounds", "2", *COMMON, "--json").stdout)
    assert all(r["ran"] == [] for r in again)


def test_a_retrained_checkpoint_makes_the_next_shard_stale(tmp_path):
    ws = _ws(tmp_path)
    icl("reclassify", "-w", ws, "--round", "1", "--force", "--epochs", "2", *COMMON)
    stale = _status(ws)["icl"]["stale"]
    assert list(stale) == ["2"] and "another checkpoint 1" in stale["2"]
    rows = json.loads(icl("run", "-w", ws, "--rounds", "2", *COMMON, "--json").stdout)
    assert rows[2]["ran"] == ["synthesize", "reclassify", "evaluate"]
    assert _status(ws)["icl"]["stale"] == {}


def test_a_round_recorded_on_one_split_only_is_evaluated_again(tmp_path):
    """A round whose record has its test error but not its validation error (an older
    icl killed between the two writes) is not done: `icl run` evaluates it again."""
    ws = _ws(tmp_path)
    val = rows(ws, "SELECT error FROM evaluations WHERE round = 1 AND split = 'val'")
    execute(ws, "DELETE FROM evaluations WHERE round = 1 AND split = 'val'")
    ran = json.loads(icl("run", "-w", ws, "--rounds", "2", *COMMON, "--json").stdout)
    assert [r["ran"] for r in ran] == [[], ["evaluate"], []]
    assert rows(ws, "SELECT error FROM evaluations WHERE round = 1 AND split = 'val'") == val


def test_repair_removes_only_icls_own_temporaries_and_lists_them(tmp_path):
    ws = _ws(tmp_path)
    shards = ws / "experiments" / "icl" / "shards"
    # A dead writer's leftovers, where icl writes: a shard, the workspace's id, a card.
    (ws / "cards").mkdir()
    ours = [shards / "round-0003.v1.h5.tmp-999999999-abcd1234",
            ws / ".icl" / "workspace-id.new-9-0a1b2c3d.tmp-999999999-abcd1234",
            ws / "cards" / "icl.md.tmp-999999999-abcd1234"]
    for p in ours:
        p.write_bytes(b"half")
    theirs = [shards / "notes.tmp-old", ws / "experiments" / "icl" / "x.h5.tmp-1-abcd1234",
              shards / "round-0003.v1.h5.tmp-999999999-NOTHEX00",
              ws / "notes.tmp-999999999-abcd1234", ws / ".icl" / "notes.tmp-old"]
    for p in theirs:
        p.write_bytes(b"mine")
    listed = json.loads(icl("verify", "-w", ws, "--json", code=None).stdout)["temporary"]
    assert sorted(listed) == sorted(str(p) for p in ours), listed
    out = icl("verify", "-w", ws, "--repair", "--no-mlflow")  # (MLflow: not this test's)
    for p in ours:
        assert f"removed leftover temporary {p.relative_to(ws).as_posix()}" in out.stdout
        assert not p.exists()
    assert all(p.read_bytes() == b"mine" for p in theirs)
    assert all(p.name not in out.stdout for p in theirs)


def test_replay_uses_what_was_recorded_and_refuses_a_changed_source(tmp_path):
    ws = _ws(tmp_path)
    w = ["-w", ws, "-e", "icl"]
    amp = json.loads(icl("synthesize", *w, "--round", "2", "--force", "--amp", *COMMON,
                         "--json").stdout)
    # Replayed without --amp, it draws as recorded (bf16 autocast), and says so the same
    # way with and without --json.
    replay = icl("synthesize", *w, "--round", "2", "--replay", *COMMON, "--json")
    assert json.loads(replay.stdout)["replay_match"] is True
    assert json.loads(replay.stdout)["version"] == amp["version"]
    icl("reclassify", *w, "--round", "1", "--force", "--epochs", "2", *COMMON)
    refused = icl("synthesize", *w, "--round", "2", "--replay", *COMMON, code=3)
    assert "checkpoint 1 of 'icl' changed since round 2 was synthesized" in refused.stderr
