"""``torchrun --nproc-per-node 2 -m icl_cli reclassify --round t`` (gloo, CPU).

From the same checkpoint and shard, 2 ranks train the one-process weights (up to
floating-point order) and rank 0 alone records them, with the world size; a replay in one
process compares within the stated tolerance; a rank killed mid-training fails the step
on every rank in one line and leaves nothing recorded. Before any collective the ranks
agree on what they run: ranks on another experiment, round, command or settings fail
every rank in one line, at once, with nothing recorded; several experiments are refused
under torchrun; SIGTERM ends every rank within seconds, the step logged interrupted.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import Store
from tests.kit import COMMON, child_env, icl, icl_json, tiny, torchrun

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
    # Rank 0 finds rank 1 gone in its next collective, or torchrun, which saw rank 1 die
    # first, stops it with SIGTERM: either way one line that says so.
    assert len(errors) == 1, ran.stderr[-3000:]
    assert (("another rank stopped during the step" in errors[0]
             and "nothing was saved" in errors[0])
            or ("rank 0 of 2: terminated (SIGTERM); torchrun also sends it to every rank "
                "once one fails" in errors[0] and "nothing half-written was kept" in errors[0])), \
        ran.stderr[-3000:]
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


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A baseline 'base' and an ICL experiment 'icl' started from it, icl's round-1 shard
    drawn: `reclassify --round 1` is next for both."""
    ws = tmp_path_factory.mktemp("paired")
    icl("init", "-w", ws, "-e", "base", "--method", "baseline", *SETTINGS, *COMMON)
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0", *COMMON)
    icl("synthesize", "-w", ws, "-e", "icl", "--round", "1", *COMMON)
    return ws


def _errors(ran) -> list[str]:
    return [line for line in ran.stderr.splitlines() if line.startswith("error:")]


def _nothing_recorded(ws) -> None:
    with Store.open(ws) as st:
        for name in ("base", "icl"):
            assert st.checkpoint(name, 1) is None
            assert not [s for s in st.steps(name) if s.round == 1 and
                        s.name == "reclassify"], name


def test_ranks_of_other_experiments_are_refused_before_training(paired, tmp_path):
    """Rank 0 on `-e icl`, rank 1 on `-e base`: before, both trained through the same
    all-reduces and rank 0 recorded an icl checkpoint that was not the one-process
    round; now one line on each rank, exit 3, nothing recorded."""
    ws = _copy(paired, tmp_path, "two")
    t0 = time.monotonic()
    ran = torchrun_icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON,
                       env={"ICL_TEST_RANK1_ARGV": json.dumps(
                           ["reclassify", "-w", str(ws), "-e", "base", "--round", "1",
                            *COMMON])})
    assert ran.returncode != 0 and time.monotonic() - t0 < 120
    errors = _errors(ran)
    assert len(errors) == 2, ran.stderr[-3000:]
    assert all("torchrun ranks disagree on the experiment ('icl' on rank " in e or
               "torchrun ranks disagree on the experiment ('base' on rank " in e
               for e in errors), errors
    assert all("icl reclassify -w" in e and "nothing was run" in e for e in errors)
    _nothing_recorded(ws)


@pytest.mark.slow
@pytest.mark.parametrize("other", [
    ["evaluate", "-e", "icl", "--round", "0"],  # another command: rank 0 waited minutes
    ["reclassify", "-e", "icl", "--round", "1", "--epochs", "1"],  # other settings
], ids=["another command", "other settings"])
def test_a_rank_running_something_else_fails_every_rank_at_once(paired, tmp_path, other):
    ws = _copy(paired, tmp_path, "other")
    t0 = time.monotonic()
    ran = torchrun_icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON,
                       env={"ICL_TEST_RANK1_ARGV": json.dumps([*other, "-w", str(ws),
                                                               *COMMON])})
    assert ran.returncode != 0 and time.monotonic() - t0 < 120
    errors = _errors(ran)
    assert len(errors) == 2 and all("torchrun ranks disagree on the " in e for e in errors), \
        ran.stderr[-3000:]
    _nothing_recorded(ws)
    with Store.open(ws) as st:
        assert not [s for s in st.steps("icl") if s.name == "evaluate"]


@pytest.mark.slow
def test_several_experiments_under_torchrun_are_refused(paired, tmp_path):
    """Each rank would start a process per experiment: refused on every rank instead."""
    ws = _copy(paired, tmp_path, "several")
    ran = torchrun(2, "-m", "icl_cli", "run", "-w", ws, "-e", "base", "-e", "icl",
                   "--rounds", "1", *COMMON)
    errors = _errors(ran)
    assert ran.returncode != 0 and len(errors) == 2, ran.stderr[-3000:]
    # Each rank refuses; one that is slower than the other may be stopped first by
    # torchrun, which sends SIGTERM to every rank once one fails.
    refused = ["under torchrun `icl run` runs one experiment on every rank" in e
               for e in errors]
    assert any(refused) and all(r or "terminated (SIGTERM); torchrun also sends it" in e
                                for r, e in zip(refused, errors, strict=True)), errors
    _nothing_recorded(ws)


@pytest.mark.slow
def test_sigterm_ends_every_rank_within_10_seconds(paired, tmp_path):
    """SIGTERM to torchrun while rank 0 saves and rank 1 waits for it (what `timeout`
    and Slurm send): every rank stops within 10 s, each with its one line, and the step is
    logged interrupted (SIGTERM). Before, the waiting rank held the signal until the
    collective ended, and rank 0 waited for it at exit."""
    ws = _copy(paired, tmp_path, "term")
    mark = tmp_path / "saving"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", str(ENTRY), "reclassify", "-w", str(ws), "-e", "icl", "--round", "1",
         *COMMON], env=child_env(ICL_TEST_SLOW_SAVE=str(mark)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                proc.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(1)  # rank 1 is waiting in the collective by now
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10, (took, stderr[-3000:])
    errors = _errors(subprocess.CompletedProcess([], proc.returncode, "", stderr))
    assert len(errors) == 2 and all("terminated (SIGTERM)" in e for e in errors), \
        stderr[-3000:]
    with Store.open(ws) as st:
        assert st.checkpoint("icl", 1) is None
        [step] = [s for s in st.steps("icl", name="reclassify") if s.round == 1]
        assert (step.state, step.message) == ("interrupted", "interrupted (SIGTERM)")
