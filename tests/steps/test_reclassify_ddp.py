"""Issue 12: ``torchrun --nproc-per-node 2 -m icl_cli reclassify --round t`` (gloo, CPU).

From the same checkpoint and shard, 2 ranks train the one-process weights (up to
floating-point order) and rank 0 alone records them, with the world size; a replay in one
process compares within the stated tolerance; a rank killed mid-training fails the step
on every rank in one line and leaves nothing recorded.
"""

import json
import shutil
from pathlib import Path

import pytest

from store import Store
from tests.kit import COMMON, icl, icl_json, tiny, torchrun

ENTRY = Path(__file__).with_name("ddp_entry.py")
SETTINGS = tiny(init_epochs=2, epochs=2, lr=0.05)
pytestmark = pytest.mark.ddp


def torchrun_icl(*args, env=None):
    """The icl command line on 2 ranks under torchrun (a rank may be told to die)."""
    return torchrun(2, ENTRY, *args, env=env)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """A workspace at C_0 with round 1's shard drawn: reclassify round 1 is next."""
    ws = tmp_path_factory.mktemp("ws")
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", *SETTINGS, *COMMON)
    icl("synthesize", "-w", ws, "-e", "icl", "--round", "1", *COMMON)
    return ws


def _copy(ws, tmp_path, name):
    return Path(shutil.copytree(ws, tmp_path / name))


def _weights(ws):
    with Store.open(ws) as st:
        return st.load_checkpoint(st.checkpoint("icl", 1))


def _test_error(ws):
    rows = icl_json("evaluate", "-w", ws, "-e", "icl", "--round", "1", *COMMON)
    return next(r["error"] for r in rows if r["split"] == "test")


def test_two_ranks_record_the_one_process_round(synthesized, tmp_path):
    one, two = _copy(synthesized, tmp_path, "one"), _copy(synthesized, tmp_path, "two")
    icl("reclassify", "-w", one, "-e", "icl", "--round", "1", *COMMON)
    ran = torchrun_icl("reclassify", "-w", two, "-e", "icl", "--round", "1", *COMMON,
                       "--json")
    assert ran.returncode == 0, ran.stderr[-3000:]
    shown = json.loads(ran.stdout)  # one document: rank 1's standard output is discarded
    assert shown["world_size"] == 2 and not shown["reused"]
    a, b = _weights(one), _weights(two)
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff < 1e-4
    assert abs(_test_error(one) - _test_error(two)) <= 0.001  # 0.1 point
    # The world size is recorded (checkpoint and step), not part of the inputs: a rerun in
    # one process finds the round done.
    assert b["world_size"] == 2 and "world_size" not in a and a["inputs"] == b["inputs"]
    with Store.open(two) as st:
        steps = [s for s in st.steps("icl", name="reclassify") if s.round == 1]
    assert [(s.state, s.config["world_size"]) for s in steps] == [("ok", 2)]  # rank 0 only
    assert icl_json("reclassify", "-w", two, "-e", "icl", "--round", "1", *COMMON)["reused"]
    # Replayed in one process: compared within the tolerance, and said so.
    replay = icl_json("reclassify", "-w", two, "-e", "icl", "--round", "1", "--replay",
                      *COMMON)
    assert replay["replay_match"] is True and replay["world_size"] == 1
    assert replay["replay_tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
    assert replay["replay_max_diff"] == pytest.approx(diff, abs=1e-6)
    assert "within atol 0.0001, rtol 0.001" in replay["replay_note"]
    assert "trained on 2 ranks, replayed on 1: not bit for bit" in replay["replay_note"]
    same = icl_json("reclassify", "-w", one, "-e", "icl", "--round", "1", "--replay", *COMMON)
    assert same["replay_match"] is True and same["replay_tolerance"] is None  # bit for bit
    icl("verify", "-w", two)


@pytest.mark.slow
def test_a_rank_killed_mid_training_fails_the_step_and_records_nothing(synthesized,
                                                                        tmp_path):
    ws = _copy(synthesized, tmp_path, "killed")
    ran = torchrun_icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON,
                       env={"ICL_TEST_KILL_RANK": "1", "ICL_TEST_KILL_STEP": "3"})
    assert ran.returncode != 0
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another rank stopped during the step" in errors[0], \
        ran.stderr[-3000:]
    assert "nothing was saved" in errors[0]
    with Store.open(ws) as st:
        assert st.checkpoint("icl", 1) is None
        assert [s.state for s in st.steps("icl", name="reclassify") if s.round == 1] \
            in (["failed"], ["interrupted"])
    assert "consistent" in icl("verify", "-w", ws).stdout
    # The lock went with the step: the round trains in one process afterwards.
    icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON)


@pytest.mark.slow
def test_a_busy_lock_fails_every_rank_in_one_line(synthesized, tmp_path):
    ws = _copy(synthesized, tmp_path, "busy")
    with Store.open(ws) as st, st.lock("icl", command="icl run (test)"):
        ran = torchrun_icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON)
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert ran.returncode != 0 and len(errors) == 2, ran.stderr[-3000:]
    assert sum("rank 0 of 2 failed:" in e for e in errors) == 1  # rank 1's line
    assert all("icl run (test)" in e for e in errors)  # who holds it, on both ranks
    with Store.open(ws) as st:
        assert st.checkpoint("icl", 1) is None
        assert not [s for s in st.steps("icl", name="reclassify") if s.round == 1]


@pytest.mark.slow
def test_init_and_run_under_torchrun_record_the_one_process_experiment(tmp_path):
    """``icl init`` (C_0 on 2 ranks) and ``icl run --rounds 1`` (synthesis split by rank,
    reclassify with DDP, rank 0 evaluating): the one-process experiment, recorded once."""
    one, two = tmp_path / "one", tmp_path / "two"
    icl("init", "-w", one, "-e", "icl", "--method", "icl", *SETTINGS, *COMMON)
    icl("run", "-w", one, "-e", "icl", "--rounds", "1", *COMMON)
    for argv in (["init", "-w", two, "-e", "icl", "--method", "icl", *SETTINGS, *COMMON],
                 ["run", "-w", two, "-e", "icl", "--rounds", "1", *COMMON, "--json"]):
        ran = torchrun_icl(*argv)
        assert ran.returncode == 0, ran.stderr[-3000:]
    rows = json.loads(ran.stdout)  # rank 0 alone printed
    assert [r["round"] for r in rows] == [0, 1]
    with Store.open(one) as a, Store.open(two) as b:
        assert [e.name for e in b.experiments()] == ["icl"]
        for t in (0, 1):
            wa = a.load_checkpoint(a.checkpoint("icl", t))["model"]
            wb = b.load_checkpoint(b.checkpoint("icl", t))["model"]
            assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
        assert len(b.shards("icl")) == 1
        ea = {(e.round, e.split): e.error for e in a.evaluations("icl")}
        eb = {(e.round, e.split): e.error for e in b.evaluations("icl")}
        assert ea.keys() == eb.keys() and len(b.evaluations("icl")) == len(eb)
        assert all(abs(ea[k] - eb[k]) <= 0.001 for k in ea)  # equal to 0.1 point
        done = [(s.name, s.round) for s in b.steps() if s.state == "ok"]
        assert len(done) == len(set(done))  # each step recorded once, by rank 0
    assert "workspace consistent" in icl("verify", "-w", two).stdout
