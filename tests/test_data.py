"""icl_cli.data: IDX reading, subsets, input mapping, augmentation, dataset loading."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cli.config import DataConfig
from icl_cli.data import (
    DataError,
    augment,
    balanced_subset,
    load,
    load_idx_folder,
    read_idx,
    to_input,
)
from tests.kit import idx_bytes, write_folder, write_idx

MNIST_DIR = Path(
    os.environ.get("ICL_MNIST_DIR", Path(__file__).parents[1].parent / "shared/data/mnist")
)
has_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST at {MNIST_DIR}"
)


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_round_trip(tmp_path, name):
    a = np.random.default_rng(1).integers(0, 256, (7, 3, 4)).astype(np.uint8)
    out = read_idx(write_idx(tmp_path / name, a))
    assert out.dtype == np.uint8 and out.shape == (7, 3, 4)
    np.testing.assert_array_equal(out, a)
    out[0, 0, 0] = 1  # writable copy


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(DataError, match=r"not an IDX file.*0x12340801") as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_idx_rejects_non_uint8(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(DataError, match="only uint8"):
        read_idx(path)


@pytest.mark.parametrize("delta, word", [(-1, "truncated"), (1, "overlong")])
def test_read_idx_body_length(tmp_path, delta, word):
    blob = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(blob[:-1] if delta < 0 else blob + b"\x00"))
    with pytest.raises(DataError, match=word):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8)))
    path = tmp_path / "c.gz"
    path.write_bytes(blob[:12] + b"garbage" * 4)
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(path)


# --------------------------------------------------------------------------- folders


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder(tmp_path, gz):
    xs, ys, xt, yt = load_idx_folder(write_folder(tmp_path, gz=gz))
    assert xs.shape == (40, 1, 5, 6) and xs.dtype == torch.uint8
    assert ys.dtype == torch.int64 and xt.shape == (20, 1, 5, 6) and len(yt) == 20


def test_load_idx_folder_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_folder(raw)
    assert len(load_idx_folder(tmp_path)[0]) == 40


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*train-images-idx3-ubyte"):
        load_idx_folder(tmp_path / "nope")
    write_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_idx_folder(tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg
    assert "train-images" not in msg


def test_count_mismatch(tmp_path):
    write_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39))
    with pytest.raises(DataError, match="40 images but .* 39 labels"):
        load_idx_folder(tmp_path)


def test_idx_dataset_requires_root():
    with pytest.raises(DataError, match="root"):
        load(DataConfig(dataset="idx"))


def test_idx_dataset_and_too_large_request(tmp_path):
    write_folder(tmp_path)
    ds = load(DataConfig(dataset="idx", root=str(tmp_path), train_size=20, val_size=8))
    assert ds.num_classes == 4 and ds.shape == (1, 5, 6)
    assert len(ds.train) == 20 and len(ds.val) == 8 and len(ds.test) == 20
    with pytest.raises(DataError, match="only 40 exist"):
        load(DataConfig(dataset="idx", root=str(tmp_path), train_size=40, val_size=1))


# --------------------------------------------------------------------------- subsets


def test_balanced_subset_counts_and_seed():
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(5))]
    a = balanced_subset(labels, 105, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[a], minlength=10)
    assert len(a) == 105 and len(a.unique()) == 105
    assert counts.max() - counts.min() == 1 and counts.sum() == 105
    assert torch.equal(a, a.sort().values)
    assert torch.equal(a, balanced_subset(labels, 105, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, balanced_subset(labels, 105, torch.Generator().manual_seed(1)))
    exact = balanced_subset(labels, 100, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(labels[exact]), torch.full((10,), 10))


def test_balanced_subset_too_few():
    labels = torch.tensor([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="class 1 has 2 samples"):
        balanced_subset(labels, 6, torch.Generator().manual_seed(0))


def test_val_disjoint_from_train_and_seeded():
    cfg = DataConfig(dataset="fake-cifar10", train_size=100, val_size=50, seed=3)
    ds = load(cfg)
    assert len(ds.train) == 100 and len(ds.val) == 50
    assert torch.bincount(ds.val.labels).tolist() == [5] * 10
    assert torch.bincount(ds.train.labels).tolist() == [10] * 10
    flat = lambda s: {bytes(x.numpy().tobytes()) for x in s.images}  # noqa: E731
    assert not flat(ds.train) & flat(ds.val)
    again = load(cfg)
    assert torch.equal(again.train.images, ds.train.images)
    assert load(cfg.replace(val_size=0)).val is None
    assert len(load(cfg.replace(train_size=None)).train) == 150


# --------------------------------------------------------------------------- tensors


def test_to_input_range():
    x = to_input(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.tolist() == [-1.0, 1.0]


def test_augment_shape_determinism_and_effect():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(8)))
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # P(no shift and no flip) = 1/162
    assert (a == 0).any()  # zero padding shifted in


def test_augment_pure_flip():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    outs = {
        tuple(augment(x, torch.Generator().manual_seed(s), pad=0)[0].flatten().tolist())
        for s in range(20)
    }
    assert outs == {tuple(x[0].flatten().tolist()), tuple(x[0].flip(-1).flatten().tolist())}


# --------------------------------------------------------------------------- datasets


def test_embedded_dataset():
    ds = load(DataConfig())
    assert ds.name == "mnist-embedded" and ds.num_classes == 10 and ds.shape == (1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [600] * 10
    assert torch.bincount(ds.test.labels).tolist() == [200] * 10
    ds = load(DataConfig(train_size=500, val_size=100))
    assert len(ds.train) == 500 and len(ds.val) == 100
    assert torch.bincount(ds.train.labels).tolist() == [50] * 10


@has_mnist
def test_full_mnist_folder():
    ds = load(DataConfig(dataset="mnist", root=str(MNIST_DIR), train_size=2000))
    assert len(ds.train) == 2000 and len(ds.test) == 10000 and ds.num_classes == 10
    assert torch.bincount(ds.train.labels).tolist() == [200] * 10


def test_cifar10_offline_error(tmp_path):
    with pytest.raises(DataError) as e:
        load(DataConfig(dataset="cifar10", root=str(tmp_path)))
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and str(tmp_path) in msg
    assert "--download" in msg and "\n" not in msg


def test_svhn_offline_error(tmp_path):
    with pytest.raises(DataError, match=r"extra_32x32\.mat") as e:
        load(DataConfig(dataset="svhn", root=str(tmp_path)))
    assert str(tmp_path) in str(e.value)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="--dataset must be one of .*cifar10.*, got .nope."):
        load(DataConfig(dataset="nope"))


@pytest.mark.parametrize("name", ["fake-cifar10", "fake-svhn"])
def test_fake_datasets(name):
    ds = load(DataConfig(dataset=name))
    assert ds.shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert len(ds.train) == 200 and len(ds.test) == 100
    assert torch.equal(ds.train.images, load(DataConfig(dataset=name)).train.images)
