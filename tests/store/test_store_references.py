"""store.references: a reference net is cached by key and trusted through the sha256 the
catalog holds (``reference_nets``), not through a hash file beside it: a net whose file
does not match is refused, one the catalog has no row for (a write that never finished,
or a file from elsewhere) is trained again."""

import pytest
import torch

from store.errors import IntegrityError
from store.references import load_reference, reference_key, save_reference


def test_round_trip_and_key(store):
    key = reference_key({"net": "mlp", "seed": 0})
    assert key != reference_key({"net": "mlp", "seed": 1}) and len(key) == 16
    assert load_reference(store, key) is None
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"seed": 0}}
    sha = save_reference(store, key, state)
    loaded, again = load_reference(store, key)
    assert again == sha and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["meta"] == {"seed": 0}
    assert store.catalog.reader.reference(key) == (f".icl/references/{key}.pt", sha)


def test_a_file_that_does_not_match_the_catalog_is_refused_whatever_lies_beside_it(store):
    key = reference_key({"net": "mlp"})
    save_reference(store, key, {"model": {"w": torch.ones(3)}})
    folder = store.root / ".icl" / "references"
    path = folder / f"{key}.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, path)  # another net in its place
    from store.workspace import sha256_file

    (folder / f"{key}.sha256").write_text(sha256_file(path) + "\n")  # and a hash to match
    with pytest.raises(IntegrityError, match=r"reference net \.icl/references/\w+\.pt does "
                       "not match its recorded sha256"):
        load_reference(store, key)


def test_a_net_the_catalog_does_not_know_is_not_trusted(store):
    key = reference_key({"net": "mlp", "width": 4})
    folder = store.root / ".icl" / "references"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.ones(2)}}, folder / f"{key}.pt")  # no row: not ours
    from store.workspace import sha256_file

    (folder / f"{key}.sha256").write_text(sha256_file(folder / f"{key}.pt") + "\n")
    assert load_reference(store, key) is None  # trained again, then trusted
    sha = save_reference(store, key, {"model": {"w": torch.full((2,), 2.0)}})
    assert load_reference(store, key)[1] == sha


def test_a_deleted_net_is_trained_again(store):
    key = reference_key({"net": "mlp", "width": 8})
    save_reference(store, key, {"model": {"w": torch.ones(1)}})
    (store.root / ".icl" / "references" / f"{key}.pt").unlink()
    assert load_reference(store, key) is None
