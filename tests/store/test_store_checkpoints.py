"""Checkpoints: atomic save, hash check, weights_only load, refusal of foreign files."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from store import ConflictError, IntegrityError, StoreError


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(3, 2, generator=g), "b": torch.zeros(3)},
        "optimizer": None,
        "config": {"lr": 0.01, "epochs": 1},
    }


class Evil:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip(store):
    c0 = store.save_checkpoint("icl", 0, _state())
    c1 = store.save_checkpoint("icl", 1, _state(1), parent=c0)
    assert c1.path == store.root / "experiments/icl/checkpoints/round-0001.pt"
    assert c1.parent_sha256 == c0.sha256 and c0.parent_sha256 is None
    assert c1.config_hash and store.checkpoint("icl", 1) == c1
    assert [c.round for c in store.checkpoints("icl")] == [0, 1]
    state = store.load_checkpoint(c1)
    assert torch.equal(state["model"]["w"], _state(1)["model"]["w"])
    assert (state["experiment"], state["round"]) == ("icl", 1)
    assert store.checkpoint("icl", 5) is None


def test_existing_round_needs_replace(store):
    store.save_checkpoint("icl", 1, _state(0))
    with pytest.raises(ConflictError, match="--force"):
        store.save_checkpoint("icl", 1, _state(1))
    new = store.save_checkpoint("icl", 1, _state(1), replace=True)
    assert store.checkpoint("icl", 1).sha256 == new.sha256
    assert torch.equal(store.load_checkpoint(new)["model"]["w"], _state(1)["model"]["w"])


def test_non_finite_weights_are_refused_and_nothing_is_written(store):
    state = _state()
    state["model"]["w"][1, 0] = float("nan")
    with pytest.raises(StoreError, match="'?w'? hold NaN or infinite values"):
        store.save_checkpoint("icl", 1, state)
    assert store.checkpoint("icl", 1) is None
    assert not list((store.root / "experiments/icl").rglob("round-0001.pt*"))


@pytest.mark.parametrize("moment", ["after the rename", "while hashing"])
def test_ctrl_c_between_the_rename_and_the_row_leaves_no_file(store, monkeypatch, moment):
    """A Ctrl-C after the file has its final name but before its row is committed: the
    file goes too (a lone C_0 file would make the workspace look like a lost catalog)."""
    from store import artifacts, workspace

    def interrupt(*_args):
        raise KeyboardInterrupt

    where = ((workspace, "fsync_dir") if moment == "after the rename"
             else (artifacts, "sha256_file"))
    monkeypatch.setattr(*where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.save_checkpoint("icl", 0, _state())
    monkeypatch.undo()
    assert store.checkpoint("icl", 0) is None
    assert not list((store.root / "experiments/icl").rglob("round-0000.pt*"))


def test_malicious_pickle_is_refused_and_never_runs(store, tmp_path):
    marker = tmp_path / "pwned"
    # Recorded through the store itself, so the hash matches and only weights_only stands
    # between the payload and execution.
    info = store.save_checkpoint("icl", 1, {**_state(), "extra": Evil(marker)})
    with pytest.raises(IntegrityError) as e:
        store.load_checkpoint(info)
    assert "experiments/icl/checkpoints/round-0001.pt" in str(e.value)
    assert "icl reclassify --round 1 --force" in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_checkpoint_of_another_experiment_is_refused(store):
    store.create_experiment("other", {"method": "baseline"})
    mine = store.save_checkpoint("icl", 1, _state(0))
    theirs = store.save_checkpoint("other", 1, _state(1))
    # A row that points at the other experiment's bytes (hash matching) is caught by the
    # experiment/round recorded inside the payload.
    forged = dataclasses.replace(mine, path=theirs.path, sha256=theirs.sha256)
    with pytest.raises(IntegrityError, match="belongs to experiment 'other' round 1"):
        store.load_checkpoint(forged)
    # A file copied over ours fails the hash check first.
    shutil.copyfile(theirs.path, mine.path)
    with pytest.raises(IntegrityError, match="sha256"):
        store.load_checkpoint(mine)


def test_flipped_byte(store):
    info = store.save_checkpoint("icl", 0, _state())
    data = bytearray(info.path.read_bytes())
    data[-10] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"round-0000\.pt failed its sha256 check.*init"):
        store.load_checkpoint(info)
