"""Integrity and security: a damaged, swapped or edited shard or checkpoint is refused
before use, with one line naming the file and the command that re-creates it; a
checkpoint carrying a pickle payload is refused and the payload never runs; an HDF5 file
that passes the hash check (the catalog was edited to match) is still validated (shapes,
dtypes, attributes, values) before its arrays are used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.kit import COMMON, TINY, icl
from tests.reliability.relkit import (
    assert_unchanged,
    execute,
    one_line,
    rows,
    run_child,
    sha256,
    snapshot,
)

SHARD = "experiments/icl/shards/round-0001.v1.h5"
CKPT = "experiments/icl/checkpoints/round-0001.pt"
SHARD_FIX = "icl synthesize --round 1 --force -e icl"
CKPT_FIX = "icl reclassify --round 1 --force -e icl"


@pytest.fixture(scope="module")
def ws(sqlite_templates, tmp_path_factory) -> Path:
    """'icl' at round 1 plus its round-2 shard, and a second experiment 'other' (another
    seed) with its own round-1 shard: the sources of swapped-in files."""
    ws = tmp_path_factory.mktemp("integrity") / "ws"
    shutil.copytree(sqlite_templates.done, ws)
    logs = ws.parent / "logs"
    run_child(["synthesize", "-w", ws, "-e", "icl", "--round", "2", *COMMON], logs)
    run_child(["init", "-w", ws, "-e", "other", "--method", "icl", "--seed", "5",
               *TINY, *COMMON], logs)
    run_child(["synthesize", "-w", ws, "-e", "other", "--round", "1", *COMMON], logs)
    return ws


def _flip(b: bytes) -> bytes:
    a = bytearray(b)
    a[len(a) // 2] ^= 0x01
    return bytes(a)


def _h5_edit(original: bytes, path: Path) -> bytes:
    path.write_bytes(original)
    with h5py.File(path, "r+") as f:
        f["samples"][0, 0, 0, 0] += 0.5
    return path.read_bytes()


def _tampered(ws: Path, rel: str, other_round: str, other_exp: str):
    """(what, bytes or None to delete) for one artefact."""
    original = (ws / rel).read_bytes()
    out = [("a flipped byte", _flip(original)),
           ("truncated", original[: len(original) // 2]),
           ("emptied", b""),
           ("replaced by another round's", (ws / other_round).read_bytes()),
           ("replaced by another experiment's", (ws / other_exp).read_bytes()),
           ("deleted", None)]
    if rel.endswith(".h5"):
        out.append(("edited with h5py", _h5_edit(original, ws / "edit.h5")))
        (ws / "edit.h5").unlink()
    return original, out


def _check_refused(ws: Path, rel: str, fix: str, argv: list, what: str) -> None:
    before = snapshot(ws)
    res = icl(*argv, code=None)
    assert res.code == 4, (what, argv, res)
    line = one_line(res)
    assert rel in line and fix in line, (what, line)
    assert_unchanged(before, snapshot(ws), (what, argv))


@pytest.mark.parametrize("kind", ["shard", "checkpoint"])
def test_damaged_or_swapped_files_are_refused_before_use(ws, kind):
    w = ["-w", ws, "-e", "icl"]
    if kind == "shard":
        rel, fix = SHARD, SHARD_FIX
        original, cases = _tampered(ws, rel, "experiments/icl/shards/round-0002.v1.h5",
                                    "experiments/other/shards/round-0001.v1.h5")
        # Every command that reads the shard checks it first.
        readers = [["reclassify", *w, "-r", 1, "--force", *COMMON], ["inspect", *w, "-r", 1],
                   ["synthesize", *w, "-r", 1, *COMMON],
                   ["synthesize", *w, "-r", 1, "--replay", *COMMON],
                   ["reclassify", *w, "-r", 2, *COMMON], ["run", *w, "--rounds", 2, *COMMON]]
    else:
        rel, fix = CKPT, CKPT_FIX
        original, cases = _tampered(ws, rel, "experiments/icl/checkpoints/round-0000.pt",
                                    "experiments/other/checkpoints/round-0000.pt")
        readers = [["evaluate", *w, "-r", 1, *COMMON], ["reclassify", *w, "-r", 1, *COMMON],
                   ["synthesize", *w, "-r", 2, "--force", *COMMON],
                   ["reclassify", *w, "-r", 2, *COMMON],
                   ["attack", *w, "-r", 1, "--against", "icl:0", *COMMON],
                   ["init", "-w", ws, "-e", "copy", "--from", "icl:1", *COMMON]]
    try:
        for i, (what, blob) in enumerate(cases):
            if blob is None:
                (ws / rel).unlink()
            else:
                (ws / rel).write_bytes(blob)
            # Each kind of damage against two readers; all readers see some damage.
            for argv in (readers[i % len(readers)], readers[(i + 3) % len(readers)]):
                _check_refused(ws, rel, fix, argv, what)
    finally:
        (ws / rel).write_bytes(original)
    run_child(["verify", "-w", ws], ws.parent / "logs")


def test_a_pickle_payload_in_a_checkpoint_never_runs(ws, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    original = (ws / CKPT).read_bytes()
    (old_sha,) = rows(ws, "SELECT sha256 FROM checkpoints WHERE path = ?", CKPT)[0]
    state = torch.load(ws / CKPT, weights_only=True)
    state["model"] = {"layer": Payload()}
    try:
        torch.save(state, ws / CKPT)
        _check_refused(ws, CKPT, CKPT_FIX, ["evaluate", "-w", ws, "-e", "icl", "-r", 1,
                                            *COMMON], "pickle, hash differs")
        # Even with the catalog edited to trust it, weights_only refuses the payload.
        execute(ws, "UPDATE checkpoints SET sha256 = ? WHERE path = ?", sha256(ws / CKPT), CKPT)
        for argv in (["evaluate", "-w", ws, "-e", "icl", "-r", 1, *COMMON],
                     ["synthesize", "-w", ws, "-e", "icl", "-r", 2, "--force", *COMMON]):
            before = snapshot(ws)
            line = one_line(icl(*argv, code=4))
            assert "refused" in line and CKPT in line, line
            assert_unchanged(before, snapshot(ws), argv)
        assert not marker.exists(), "the pickle payload ran"
    finally:
        (ws / CKPT).write_bytes(original)
        execute(ws, "UPDATE checkpoints SET sha256 = ? WHERE path = ?", old_sha, CKPT)


def _variants():
    """(what, edit(h5py file), words in the refusal) for a shard that h5py can open."""

    def replace(name, data):
        def edit(f):
            del f[name]
            f.create_dataset(name, data=data)
        return edit

    def arrays(f):
        return {k: f[k][()] for k in ("samples", "target", "steps", "logit", "passed")}

    def set_attr(key, value):
        return lambda f: f.attrs.__setitem__(key, value)

    def grow(f):  # one sample more in every dataset than the catalog counts
        for k, a in arrays(f).items():
            replace(k, np.concatenate([a, a[:1]]))(f)

    def target(value):
        def edit(f):
            t = f["target"][()]
            t[0] = value
            replace("target", t)(f)
        return edit

    def nan(f):
        s = f["samples"][()]
        s[0, 0, 0, 0] = np.nan
        replace("samples", s)(f)

    return [
        ("float64 samples", lambda f: replace("samples", f["samples"][()].astype("f8"))(f),
         "float64"),
        ("3-D samples", lambda f: replace("samples", f["samples"][()][:, 0])(f), "3-D"),
        ("samples of another image size",
         lambda f: replace("samples", np.zeros((len(f["target"]), 3, 32, 32), "f4"))(f),
         "shape"),
        ("a dataset missing", lambda f: f.__delitem__("passed"), "no dataset 'passed'"),
        ("an attribute missing", lambda f: f.attrs.__delitem__("round"), "lacks attributes"),
        ("the round attribute wrong", set_attr("round", 2), "holds round 2"),
        ("a newer format", set_attr("format_version", 99), "newer than this icl"),
        ("NaN in samples", nan, "NaN"),
        ("target shorter", lambda f: replace("target", f["target"][()][:-1])(f), "shape"),
        ("more samples than the catalog says", grow, "the catalog says"),
        ("a class that does not exist", target(12), "targets class 12"),
        ("a negative class", target(-1), "negative target"),
    ]


@pytest.mark.parametrize("what,edit,words", _variants(), ids=[v[0] for v in _variants()])
def test_hdf5_is_validated_even_when_the_hash_matches(ws, what, edit, words):
    original = (ws / SHARD).read_bytes()
    (old_sha,) = rows(ws, "SELECT sha256 FROM shards WHERE path = ?", SHARD)[0]
    try:
        with h5py.File(ws / SHARD, "r+") as f:
            edit(f)
        execute(ws, "UPDATE shards SET sha256 = ? WHERE path = ?", sha256(ws / SHARD), SHARD)
        before = snapshot(ws)
        line = one_line(icl("reclassify", "-w", ws, "-e", "icl", "-r", 1, "--force", *COMMON,
                            code=4))
        assert SHARD in line and words in line, line
        assert_unchanged(before, snapshot(ws), what)
    finally:
        (ws / SHARD).write_bytes(original)
        execute(ws, "UPDATE shards SET sha256 = ? WHERE path = ?", old_sha, SHARD)


def test_not_hdf5_at_all_with_a_matching_hash(ws):
    original = (ws / SHARD).read_bytes()
    (old_sha,) = rows(ws, "SELECT sha256 FROM shards WHERE path = ?", SHARD)[0]
    try:
        (ws / SHARD).write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4000))
        execute(ws, "UPDATE shards SET sha256 = ? WHERE path = ?", sha256(ws / SHARD), SHARD)
        line = one_line(icl("inspect", "-w", ws, "-e", "icl", "-r", 1, code=4))
        assert "not a readable HDF5 file" in line and SHARD_FIX in line
    finally:
        (ws / SHARD).write_bytes(original)
        execute(ws, "UPDATE shards SET sha256 = ? WHERE path = ?", old_sha, SHARD)
