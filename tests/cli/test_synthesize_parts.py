"""Issue 12, synthesis in parts: ``icl synthesize --round t --part i/N`` draws every N-th
block of the round, from block i, into a part file; the last part recorded joins them into
the round's shard, bit for bit the shard one process draws; a missing or corrupt part
refuses the join in one line.

Every experiment here starts ``--from whole:0`` (the same C_0, seed and settings), so its
round-1 shard must equal ``whole``'s, drawn at once. 60 per class x 10 classes = 600
samples: 3 blocks of 256 (256, 256, 88).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from store import Store
from tests.kit import COMMON, ICL, child_env, icl, tiny, torchrun

SETTINGS = tiny(count=60)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace whose experiment ``whole`` has round 1 drawn by one process."""
    ws = tmp_path_factory.mktemp("ws")
    icl("init", "-w", ws, "-e", "whole", *SETTINGS, *COMMON)
    icl("synthesize", "-w", ws, "-e", "whole", "-r", 1, *COMMON)
    return ws


def paired(ws, name):
    icl("init", "-w", ws, "-e", name, "--from", "whole:0", *COMMON)
    return name


def shard(ws, name, round_=1):
    with Store.open(ws) as st:
        return st.read_shard(st.active_shard(name, round_))


def assert_same_shard(ws, name):
    want, got = shard(ws, "whole"), shard(ws, name)
    assert want["samples"].shape == (600, 1, 28, 28)
    for key in want:  # bit for bit, every array
        assert np.array_equal(want[key], got[key]), key


def part(ws, name, spec, *extra, code=0):
    return icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--part", spec, *extra, *COMMON,
               code=code)


def part_files(ws, name):
    return sorted(p.name for p in (ws / "experiments" / name / "shards").glob("*.part-*"))


@pytest.mark.slow
def test_three_parts_as_three_processes_equal_the_whole_round(ws):
    name = paired(ws, "procs")
    procs = [subprocess.Popen(
        [*ICL, "synthesize", "-w", str(ws), "-e", name, "-r", "1", "--part", f"{i}/3",
         *COMMON], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in (1, 2, 3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert_same_shard(ws, name)
    assert part_files(ws, name) == []  # joined, then removed
    with Store.open(ws) as st:
        steps = st.steps(name, round=1)
    assert sorted(s.config["part"][0] for s in steps if s.name == "synthesize-part") == [1, 2, 3]
    assert [s.config["parts"] for s in steps if s.name == "synthesize"] == [3]


def test_parts_in_any_order_join_into_the_whole_rounds_shard(ws):
    name = paired(ws, "ordered")
    first = part(ws, name, "3/3")
    assert "parts 1/3, 2/3 of round 1 still to draw" in first.stderr
    assert part_files(ws, name) == ["round-0001.v1.part-3-of-3.h5"]
    waiting = icl("verify", "-w", ws).stdout  # a part waiting for the others: no orphan
    assert f"part not joined yet: experiments/{name}/shards/round-0001.v1.part-3-of-3.h5" \
        in waiting.replace(str(ws) + "/", "")
    assert "part-3-of-3" not in "".join(x for x in waiting.splitlines() if "orphan" in x)
    part(ws, name, "1/3")
    last = part(ws, name, "2/3")
    assert "'ordered' round 1 shard v1" in last.stdout  # the last part joined the shard
    assert_same_shard(ws, name)
    assert part_files(ws, name) == []
    assert "workspace consistent" in icl("verify", "-w", ws).stdout
    # Done: a part again, or --merge, reports the shard and changes nothing.
    again = part(ws, name, "2/3")
    assert "already synthesized" in again.stderr
    assert "already synthesized" in icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--merge",
                                        *COMMON).stderr
    with Store.open(ws) as st:
        assert [s.version for s in st.shards(name, 1)] == [1]
    # One process replays the joined shard bit for bit (blocks recorded in its settings).
    replay = icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--replay", *COMMON)
    assert "matches bit for bit" in replay.stdout
    icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--merge", "--force", *COMMON, code=3)


def test_two_parts_interleave_the_blocks_and_join_into_the_whole_round(ws):
    name = paired(ws, "halves")
    part(ws, name, "1/2")
    with Store.open(ws) as st:
        (first,) = [s.config for s in st.steps(name, round=1) if s.name == "synthesize-part"]
    assert first["rows"] == [[0, 256], [512, 600]] and first["count"] == 344  # blocks 1, 3
    part(ws, name, "2/2")  # block 2, and the join
    assert_same_shard(ws, name)


@pytest.mark.parametrize("spec", ["0/3", "4/3", "x", "1/", "/3", "2", "1/0", "-1/3"])
def test_part_must_be_i_of_n(ws, spec):
    out = part(ws, "whole", spec, code=3)
    assert "--part must be i/N with 1 <= i <= N" in out.stderr
    assert out.stderr.count("\n") == 1


def test_more_parts_than_blocks_are_refused(ws):
    name = paired(ws, "toomany")
    out = part(ws, name, "1/4", code=3)
    assert "round of 600 samples is 3 block(s) of 256: it splits into 3 part(s) at most, " \
           "not 4" in out.stderr
    assert part_files(ws, name) == []


def test_a_missing_part_refuses_the_merge(ws):
    name = paired(ws, "missing")
    part(ws, name, "1/3")
    part(ws, name, "3/3")
    out = icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--merge", *COMMON, code=3)
    assert out.stderr.strip() == (
        f"error: part 2/3 of round 1 of '{name}' is missing (not drawn, or drawn for other "
        f"settings): run `icl synthesize --round 1 --part 2/3 -e {name}`")
    with Store.open(ws) as st:
        assert st.active_shard(name, 1) is None
    # A recorded part whose file is gone is missing too (exit 3), named with its command.
    (ws / "experiments" / name / "shards" / "round-0001.v1.part-3-of-3.h5").unlink()
    out = icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--merge", *COMMON, code=3)
    assert out.stderr.strip() == (
        f"error: part 2/3 of round 1 of '{name}' is missing (not drawn, or drawn for other "
        f"settings): run `icl synthesize --round 1 --part 2/3 -e {name}`")
    # The command it names records part 2; its join then finds part 3's file gone.
    out = part(ws, name, "2/3", code=3)
    assert out.stderr.strip() == (
        f"error: part 3/3 of round 1 (experiments/{name}/shards/round-0001.v1.part-3-of-3.h5)"
        f" is missing: draw it again with `icl synthesize --round 1 --part 3/3 -e {name}`")
    part(ws, name, "3/3")  # which completes the round
    assert_same_shard(ws, name)


def test_a_corrupt_part_refuses_the_merge(ws):
    name = paired(ws, "corrupt")
    part(ws, name, "1/3")
    part(ws, name, "2/3")
    path = ws / "experiments" / name / "shards" / "round-0001.v1.part-1-of-3.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = part(ws, name, "3/3", code=4)  # the last part tries to join them
    line = out.stderr.strip()
    assert line.startswith(f"error: part 1/3 of round 1 (experiments/{name}/shards/"
                           "round-0001.v1.part-1-of-3.h5) failed its sha256 check")
    assert line.endswith(f"draw it again with `icl synthesize --round 1 --part 1/3 -e {name}`")
    with Store.open(ws) as st:
        assert st.active_shard(name, 1) is None
        assert [s.name for s in st.steps(name, round=1)].count("synthesize") == 0
    icl("synthesize", "-w", ws, "-e", name, "-r", 1, "--merge", *COMMON, code=4)
    part(ws, name, "1/3")  # drawn again, and now the last one: joined
    assert_same_shard(ws, name)


def test_parts_of_other_settings_are_not_joined(ws):
    name = paired(ws, "mixed")
    part(ws, name, "1/3", "--max-steps", "10")
    part(ws, name, "2/3")
    last = part(ws, name, "3/3")
    assert "parts 1/3 of round 1 still to draw" in last.stderr  # 1/3 was another config
    with Store.open(ws) as st:
        assert st.active_shard(name, 1) is None
    assert "part 1/3 of round 1" in icl("synthesize", "-w", ws, "-e", name, "-r", 1,
                                        "--merge", *COMMON, code=3).stderr
    part(ws, name, "1/3")
    assert_same_shard(ws, name)


def test_a_part_being_drawn_elsewhere_is_refused(ws):
    name = paired(ws, "claimed")
    lock = ws / ".icl" / "locks" / f"{name}@part-2-of-3.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = part(ws, name, "2/3", code=5)
        assert f"part 2/3 of '{name}' is being drawn by another icl process" in out.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert part_files(ws, name) == []
    part(ws, name, "2/3")  # free again
    assert part_files(ws, name) == ["round-0001.v1.part-2-of-3.h5"]


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_ranks_split_the_round_by_themselves(ws):
    name = paired(ws, "ranks")
    run = torchrun(2, "-m", "icl_cli", "synthesize", "-w", ws, "-e", name, "-r", "1", *COMMON)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count(f"'{name}' round 1 shard v1") == 1  # rank 0 alone prints
    assert_same_shard(ws, name)
    with Store.open(ws) as st:
        steps = st.steps(name, round=1)
    parts = sorted(tuple(s.config["part"]) for s in steps if s.name == "synthesize-part")
    assert parts == [(1, 2), (2, 2)]  # rank r drew part r+1 of 2
    assert part_files(ws, name) == []


@pytest.mark.slow
@pytest.mark.ddp
def test_a_rank_killed_while_drawing_fails_every_rank_and_records_nothing(ws):
    name = paired(ws, "killed")
    run = torchrun(2, Path(__file__).with_name("synth_entry.py"), "synthesize", "-w", ws,
                   "-e", name, "-r", "1", *COMMON, env={"ICL_TEST_KILL_RANK": "1"})
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    # Rank 0's one line: the lost peer, or torchrun's SIGTERM if that came first.
    assert len(errors) == 1, run.stderr[-3000:]
    assert "another rank stopped during the step" in errors[0] or errors[0].startswith(
        "error: rank 0 of 2: terminated (SIGTERM); torchrun also sends it"), errors
    with Store.open(ws) as st:
        assert st.active_shard(name, 1) is None
        assert [s.name for s in st.steps(name, round=1)] == []
    assert part_files(ws, name) == []  # rank 0's part was not recorded: removed
    assert "workspace consistent" in icl("verify", "-w", ws).stdout
    part(ws, name, "1/1")  # the lock went with the step
    assert_same_shard(ws, name)
