"""Part files of ``icl synthesize --part i/N``: a part's identity includes its settings, so a
part drawn with other settings never overwrites a recorded part of another set; and ``icl
verify`` checks each part against the hash its step record holds (a corrupt one exits 4),
names a part that a round's shard made obsolete, and prints commands that run as printed.
Parts are made here as ``icl_cli.steps.parts`` makes them: a file through the store, then
a ``synthesize-part`` step whose config names its path and sha256."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store import Store

ROOT = Path(__file__).resolve().parents[2]
SAMPLER = {"count": 2, "lr": 0.01}


def _attrs(seed: int = 7, sampler: dict = SAMPLER, rows=((0, 12),)) -> dict:
    return {"seed": seed, "sampler_config": sampler, "source_checkpoint": "ab" * 32,
            "rows": [list(r) for r in rows], "round_count": 24}


def _record(st: Store, info, attrs: dict) -> None:
    """The part's step record, as ``steps.parts`` writes it."""
    plan = {"version": info.version, "seed": attrs["seed"], "sampler": attrs["sampler_config"],
            "source": attrs["source_checkpoint"], "count": attrs["round_count"]}
    with st.step("icl", "synthesize-part", info.round, {
            "round": info.round, "part": [info.index, info.parts], "rows": attrs["rows"],
            "plan": plan, "path": st.rel(info.path), "sha256": info.sha256,
            "count": info.count, "seconds": 0.1, "device": "cpu"}):
        pass


def icl(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "icl_cli", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_part_of_other_settings_never_overwrites_a_recorded_part(store, make_arrays):
    mine = store.files.write_part("icl", 1, 1, 2, 2, make_arrays(seed=1), _attrs(seed=7))
    _record(store, mine, _attrs(seed=7))
    kept = mine.path.read_bytes()
    for other in (_attrs(seed=8), _attrs(sampler={**SAMPLER, "lr": 0.5})):
        theirs = store.files.write_part("icl", 1, 1, 2, 2, make_arrays(seed=2), other)
        assert theirs.path != mine.path and theirs.path.parent == mine.path.parent
        assert mine.path.read_bytes() == kept  # the recorded part is untouched
        expect = {k: other[k] for k in ("seed", "sampler_config", "source_checkpoint",
                                        "rows", "round_count")}
        store.files.read_part(theirs, {**expect, "part_index": 2, "part_count": 2}, "fix")
        found, meta = store.files.part_on_disk("icl", 1, 1, 2, 2, attrs=other)
        assert found.path == theirs.path and meta["seed"] == other["seed"]
    again = store.files.write_part("icl", 1, 1, 2, 2, make_arrays(seed=3), _attrs(seed=7))
    assert again.path == mine.path  # the same set drawn again replaces its own file
    assert store.files.part_on_disk("icl", 1, 1, 2, 2, attrs=_attrs(seed=7))[0].path \
        == mine.path
    assert len(store.files.remove_parts("icl", 1, 1)) == 3  # joined: every part goes


def _waiting_part(store, make_arrays, index: int = 1):
    c0 = store.save_checkpoint("icl", 0, {"model": {"w": torch.ones(2)}, "config": {}})
    attrs = {**_attrs(), "source_checkpoint": c0.sha256}
    info = store.files.write_part("icl", 1, 1, index, 2, make_arrays(), attrs)
    _record(store, info, attrs)
    return info, attrs


def test_verify_checks_a_part_against_its_recorded_hash(store, make_arrays):
    info, _ = _waiting_part(store, make_arrays)
    good = icl("verify", "-w", store.root)
    assert good.returncode == 0, good.stdout + good.stderr
    rel = "experiments/icl/shards/round-0001.v1.part-1-of-2.h5"
    assert (f"part not joined yet: {store.root}/{rel} (the round's last part joins it, or "
            "`icl synthesize --round 1 --merge -e icl`)") in good.stdout
    assert "--round t" not in good.stdout
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    bad = icl("verify", "-w", store.root)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert (f"problem: part 1/2 of round 1 of 'icl' ({rel}) failed its sha256 check"
            in bad.stdout)
    assert "draw it again with `icl synthesize --round 1 --part 1/2 -e icl`" in bad.stdout
    with Store.open(store.root) as st:
        assert not st.verify().ok


def test_verify_names_a_part_made_obsolete_by_a_whole_round_shard(store, make_arrays, attrs):
    info, part_attrs = _waiting_part(store, make_arrays)
    with store.step("icl", "synthesize", 1, {"count": 2}):  # the round drawn whole: v1
        store.write_shard("icl", 1, make_arrays(24), part_attrs)
    done = icl("verify", "-w", store.root)
    assert done.returncode == 0, done.stdout + done.stderr  # a leftover, not a failure
    assert f"part not joined yet: {info.path}" not in done.stdout
    lines = [x for x in done.stdout.splitlines() if x.startswith("obsolete part: ")]
    assert lines == [f"obsolete part: {info.path}: round 1 has shard v1 now (drawn whole, "
                     "or joined from other parts), so this part is never joined; delete it: "
                     f"`rm {info.path}`"], done.stdout
    report = Store.open(store.root).verify()
    assert report.ok and report.parts == [] and len(report.obsolete) == 1


def test_a_part_drawn_again_leaves_the_older_file_obsolete(store, make_arrays):
    c0 = store.save_checkpoint("icl", 0, {"model": {"w": torch.ones(2)}, "config": {}})
    attrs = {**_attrs(), "source_checkpoint": c0.sha256}
    first = store.files.write_part("icl", 1, 1, 1, 2, make_arrays(), attrs)
    _record(store, first, attrs)
    first.path.write_bytes(b"not an hdf5 file")  # corrupt, then drawn again elsewhere
    second = store.files.write_part("icl", 1, 1, 1, 2, make_arrays(), attrs)
    assert second.path != first.path
    _record(store, second, attrs)
    report = store.verify()
    assert report.ok, report.problems
    assert report.parts == [second.path]
    assert [line.split(":")[0] for line in report.obsolete] == [str(first.path)]


@pytest.mark.parametrize("broken", ["", "round-0001.v1.part-1-of-2.h5"])
def test_verify_reads_parts_without_sqlalchemy_or_h5py(store, make_arrays, broken):
    _waiting_part(store, make_arrays)
    code = ("import sys; from store import Store; r = Store.open(sys.argv[1]).verify(); "
            "print(sorted(m for m in ('sqlalchemy', 'h5py', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stderr


TINY = ["--arch", "tiny", "--train-size", "200", "--val-size", "100", "--init-epochs", "1",
        "--count", "30", "--max-steps", "15", "--sampler-lr", "0.05"]
RUN = ["--no-mlflow", "--threads", "1", "--device", "cpu"]


@pytest.mark.slow
def test_parts_of_two_sets_keep_their_files_and_the_first_set_joins(tmp_path):
    ws = tmp_path / "ws"
    assert icl("init", "-w", ws, "-e", "icl", "--method", "icl", *TINY, *RUN).returncode == 0
    first = icl("synthesize", "-w", ws, "-r", "1", "--part", "2/2", *RUN)
    assert first.returncode == 0, first.stderr
    shards = ws / "experiments" / "icl" / "shards"
    [mine] = list(shards.glob("*.part-2-of-2*.h5"))
    kept = mine.read_bytes()
    other = icl("synthesize", "-w", ws, "-r", "1", "--part", "2/2", "--max-steps", "5", *RUN)
    assert other.returncode == 0, other.stderr
    assert len(list(shards.glob("*.part-2-of-2*.h5"))) == 2 and mine.read_bytes() == kept
    last = icl("synthesize", "-w", ws, "-r", "1", "--part", "1/2", *RUN)
    assert last.returncode == 0, last.stderr  # joins the first set: its part 2 is intact
    assert sorted(p.name for p in shards.iterdir()) == ["round-0001.v1.h5"]
    assert "workspace consistent" in icl("verify", "-w", ws).stdout
