"""``icl run`` over several experiments: one child process each, a live view on stderr,
results on stdout; a failing child is reported and the others finish; Ctrl-C and SIGTERM
stop every child cleanly. Real processes (``python -m icl_cli``) on a tiny workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from icl_cli.cli.lanes import EventWriter
from store import Store
from tests.kit import COMMON, ICL, ROOT, child_env, copy_workspace, icl, icl_json, icl_process, tiny


@pytest.fixture(scope="module")
def ws(small_pair, tmp_path_factory) -> Path:
    """A baseline 'base' and an ICL experiment 'icl' from its C_0, at round 0."""
    return copy_workspace(small_pair, tmp_path_factory.mktemp("par") / "ws")


def test_two_experiments_side_by_side_print_both_results(ws):
    res = icl_process("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 1, "--parallel", 2,
                      *COMMON)
    # stdout: each experiment's table, in the order given; stderr: the progress lines.
    assert res.stdout.index("'icl'") < res.stdout.index("'base'")
    assert "synth+reclass+eval" in res.stdout and "reclass+eval" in res.stdout
    for name in ("icl", "base"):
        assert f"{name}: started" in res.stderr and f"{name}: finished" in res.stderr
        assert f"{name}: round 1 done (test " in res.stderr
    assert "round" not in res.stdout.split("'icl'")[0]  # nothing before the first table
    with Store.open(ws) as st:
        assert st.checkpoint("icl", 1) is not None and st.checkpoint("base", 1) is not None
        assert st.active_shard("icl", 1) is not None
        errors = {(e.experiment, e.round, e.split) for e in st.evaluations()}
    assert {("icl", 1, "test"), ("base", 1, "test")} <= errors
    # --json: one document, experiment -> rows, the same rows a single `icl run` prints.
    doc = json.loads(icl_process("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 1,
                                 "--parallel", 2, "--json", *COMMON).stdout)
    assert list(doc) == ["icl", "base"]
    alone = icl_json("run", "-w", ws, "-e", "icl", "--rounds", 1, *COMMON)
    assert doc["icl"] == alone and [r["round"] for r in doc["base"]] == [0, 1]
    assert all(r["ran"] == [] for r in doc["base"])  # done already: nothing re-ran


@pytest.mark.slow  # ~60 s; CI's 30 minutes (the side-by-side test covers the path)
def test_a_failing_child_is_named_and_the_others_finish(ws):
    # A failure inside one child (bad settings are refused before any child starts, see
    # below): the icl experiment's round-1 shard is damaged, the baseline's rounds are fine.
    with Store.open(ws) as st:
        shard = st.active_shard("icl", 1)
    if shard is None:
        icl_process("run", "-w", ws, "-e", "icl", "--rounds", 1, *COMMON)
        with Store.open(ws) as st:
            shard = st.active_shard("icl", 1)
    saved = shard.path.read_bytes()
    try:
        shard.path.write_bytes(saved[:-100])
        res = icl_process("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 2, "--parallel",
                          2, *COMMON, code=4)
        assert "'base'" in res.stdout and "'icl'" not in res.stdout
        line = [x for x in res.stderr.splitlines() if x.startswith("error:")]
        assert len(line) == 1 and "icl run -e icl failed (exit 4)" in line[0]
        assert "round-0001" in line[0]  # the child's own one line: which file
        with Store.open(ws) as st:
            assert st.checkpoint("base", 2) is not None and st.checkpoint("icl", 2) is None
        doc = json.loads(icl_process("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 2,
                                     "--json", *COMMON, code=4).stdout)
        assert doc["icl"]["exit_code"] == 4 and "round-0001" in doc["icl"]["error"]
        assert [r["round"] for r in doc["base"]] == [0, 1, 2]
    finally:
        shard.path.write_bytes(saved)


def test_bad_requests_are_refused_before_any_child_starts(ws):
    """In this process: a refusal comes before any child (or the live view) starts."""
    res = icl("run", "-w", ws, "-e", "icl", "-e", "nope", "--rounds", 1, *COMMON, code=3)
    assert "nope" in res.stderr and res.stderr.count("\n") == 1 and "started" not in res.stderr
    res = icl("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 1, "--parallel", 0,
              *COMMON, code=3)
    assert "--parallel must be >= 1" in res.stderr
    res = icl("run", "-w", ws, "-e", "icl", "-e", "base", "--rounds", 1, "--epochs", 0,
              "--real-epochs", 0, *COMMON, code=3)
    assert "--epochs and --real-epochs are both 0" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_an_interrupt_stops_every_child_cleanly(tmp_path, sig, code, words):
    ws = tmp_path / "ws"
    slow = tiny(train_size=1000, epochs=20, count=20, max_steps=50, sampler_lr=None)
    icl_process("init", "-w", ws, "-e", "a", "--method", "baseline", *slow, *COMMON)
    icl_process("init", "-w", ws, "-e", "b", "--method", "icl", "--from", "a:0", *COMMON)
    argv = ["run", "-w", ws, "-e", "a", "-e", "b", "--rounds", 3, "--parallel", 2, *COMMON]
    parent = subprocess.Popen(
        [*ICL, *map(str, argv)], cwd=ROOT, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both children have a step running
        with Store.open(ws) as st:
            if {s.experiment for s in st.steps() if s.state == "running"} == {"a", "b"}:
                break
        time.sleep(0.5)
    parent.send_signal(sig)
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == code, (out, err)
    assert err.strip().splitlines()[-1].startswith(f"error: {words}")
    with Store.open(ws) as st:
        states = {(s.experiment, s.state) for s in st.steps() if s.round and s.round > 0}
        assert ("a", "interrupted") in states and ("b", "interrupted") in states
        assert not any(s.state == "running" for s in st.steps())
    assert not list(ws.rglob("*.tmp-*"))


def test_event_writer_lines_and_a_gone_parent(tmp_path):
    path = tmp_path / "events"
    with path.open("w") as f:
        w = EventWriter(f)
        w.watch({"step": "synthesize", "round": 2})
        advance = w.task("synthesize round 2", 3)
        for _ in range(3):
            advance(1)
        w.done()
    events = [json.loads(x) for x in path.read_text().splitlines()]
    assert events[0] == {"event": "loop", "step": "synthesize", "round": 2}
    assert events[1] == {"event": "task", "description": "synthesize round 2", "total": 3}
    assert events[-2] == {"event": "advance", "completed": 3}  # the last advance, always
    assert events[-1] == {"event": "task-done"}
    read, write = os.pipe()
    os.close(read)
    w = EventWriter.to_fd(write)
    w.emit("loop", round=1)  # the reader is gone: no error, and nothing more is tried
    w.emit("loop", round=2)
