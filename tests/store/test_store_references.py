"""store.references: a reference net is cached by key, hash-checked on load, and a write
that never finished is not trusted."""

import pytest
import torch

from store.errors import IntegrityError
from store.references import load_reference, reference_key, save_reference


def test_round_trip_and_key(tmp_path):
    key = reference_key({"net": "mlp", "seed": 0})
    assert key != reference_key({"net": "mlp", "seed": 1}) and len(key) == 16
    assert load_reference(tmp_path, key) is None
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"seed": 0}}
    sha = save_reference(tmp_path, key, state)
    loaded, again = load_reference(tmp_path, key)
    assert again == sha and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["meta"] == {"seed": 0}


def test_a_missing_hash_means_not_cached_and_a_wrong_one_is_refused(tmp_path):
    key = reference_key({"net": "mlp"})
    save_reference(tmp_path, key, {"model": {"w": torch.ones(3)}})
    folder = tmp_path / ".icl" / "references"
    (folder / f"{key}.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        load_reference(tmp_path, key)
    (folder / f"{key}.sha256").unlink()  # the net was written, its hash never was
    assert load_reference(tmp_path, key) is None
