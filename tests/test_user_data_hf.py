"""``--dataset hf``: a Hugging Face ``DatasetDict`` saved with ``save_to_disk``, read through
the optional ``datasets`` package (``pip install 'icl-toolkit[hf]'``; CI leaves it out, so
this module is skipped there). Columns picked by type or name, class names kept, the
fingerprint over the saved files' bytes, decoded once and kept in the workspace, and every
bad input as one line naming the folder, column or row. What needs no ``datasets`` (a
folder that is no saved DatasetDict, the missing extra) is in tests/test_user_data.py.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from icl_cli import data as D  # noqa: E402
from icl_cli.config import DataConfig  # noqa: E402
from icl_cli.errors import DataError  # noqa: E402
from store import Store  # noqa: E402
from store.datacache import DataCache  # noqa: E402
from tests.kit import COMMON, icl  # noqa: E402

NAMES = ["cat", "dog", "emu"]


def images(n: int, size=(6, 5), mode="RGB", seed=0) -> list:
    """``n`` random Pillow images of ``size`` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def saved(root: Path, n_train=12, n_test=6, image_col="image", label_col="label",
          class_label=True, train=None, test=None) -> Path:
    """A DatasetDict of 3 classes saved in ``root``: an Image column, a ClassLabel (or
    plain integer) column and a caption; ``train`` / ``test`` replace a split's columns
    (None: leaves the column out)."""
    splits = {}
    for split, n, given, seed in (("train", n_train, train, 1), ("test", n_test, test, 2)):
        columns = {image_col: images(n, seed=seed), label_col: [i % 3 for i in range(n)],
                   "caption": [f"{split} {i}" for i in range(n)], **(given or {})}
        ds = datasets.Dataset.from_dict({c: v for c, v in columns.items() if v is not None})
        if class_label and columns[label_col] is not None:
            ds = ds.cast_column(label_col, datasets.ClassLabel(names=NAMES))
        if isinstance(columns[image_col][0], dict):  # encoded bytes, as given
            ds = ds.cast_column(image_col, datasets.Image())
        splits[split] = ds
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


@pytest.fixture(autouse=True)
def fresh():
    D._DECODED.clear()
    from icl_cli.steps import common

    common._load_cached.cache_clear()
    yield
    D._DECODED.clear()
    common._load_cached.cache_clear()


def test_a_saved_dataset_dict_loads_with_its_class_names(tmp_path):
    root = saved(tmp_path / "hf")
    (train_x, train_y, test_x, test_y), classes, digest = D.load_hf(root)
    assert classes == NAMES and len(digest) == 64
    assert train_x.shape == (12, 3, 5, 6) and train_x.dtype == torch.uint8
    assert test_x.shape == (6, 3, 5, 6) and train_y.tolist() == [i % 3 for i in range(12)]
    first = np.array(images(12, seed=1)[0])  # pixels as Pillow decodes them, channels first
    assert torch.equal(train_x[0], torch.from_numpy(first).permute(2, 0, 1))


def test_columns_by_name_array_images_and_integer_labels(tmp_path):
    gray = np.random.default_rng(3).integers(0, 256, (12, 5, 6), dtype=np.uint8)
    root = saved(tmp_path / "hf", image_col="img", label_col="labels", class_label=False,
                 train={"img": list(gray)}, test={"img": list(gray[:6])})
    (train_x, train_y, _, _), classes, _ = D.load_hf(root)
    assert classes == [] and train_x.shape == (12, 1, 5, 6)
    assert torch.equal(train_x[:, 0], torch.from_numpy(gray))
    assert train_y.dtype == torch.int64


def test_grey_and_rgb_images_decode_as_rgb_and_resize(tmp_path):
    root = saved(tmp_path / "hf", test={"image": images(6, mode="L", seed=4)})
    assert D.load_hf(root)[0][2].shape == (6, 3, 5, 6)
    ds = D.load(DataConfig(dataset="hf", root=str(root), image_size=4, val_size=3))
    assert ds.shape == (3, 4, 4) and ds.classes == tuple(NAMES) and len(ds.val) == 3


def test_fingerprint_over_the_saved_files_bytes(tmp_path):
    root = saved(tmp_path / "hf")
    shutil.copytree(root, tmp_path / "copy")
    assert D.load_hf(root)[2] == D.load_hf(tmp_path / "copy")[2]  # same bytes elsewhere
    cfg = DataConfig(dataset="hf", root=str(root))
    first = D.load(cfg).fingerprint
    assert D.load(cfg.replace(image_size=4)).fingerprint != first
    shutil.rmtree(root)
    saved(root, test={"label": [2, 1, 0, 0, 1, 2]})  # other labels: another fingerprint
    assert D.load(cfg).fingerprint != first


def test_decoded_once_then_read_from_the_workspace_without_datasets(tmp_path, monkeypatch):
    root = saved(tmp_path / "hf")
    ws = tmp_path / "ws"
    cfg = DataConfig(dataset="hf", root=str(root))
    first = D.load(cfg, DataCache(ws))
    assert len(list((ws / ".icl" / "data").glob("hf-*.npz"))) == 1
    D._DECODED.clear()  # a new process: the arrays come from the workspace's file
    monkeypatch.setattr(D, "_import_datasets", lambda root: pytest.fail("decoded again"))
    again = D.load(cfg, DataCache(ws))
    assert torch.equal(again.train.images, first.train.images)
    assert again.fingerprint == first.fingerprint and again.classes == first.classes


def encoded(n: int, last: bytes | None = None) -> list[dict]:
    """``n`` PNG images as the Image column stores them; ``last`` replaces the last one's
    bytes."""
    rows = []
    for im in images(n, seed=5):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        rows.append({"bytes": buf.getvalue(), "path": None})
    rows[-1]["bytes"] = last or rows[-1]["bytes"]
    return rows


@pytest.mark.parametrize("case, says", [
    ("no-image-column", "train has no image column: no Image column and none named image"),
    ("no-label-column", "train has no label column: no ClassLabel column and none named"),
    ("test-lacks-label", "test has no column label (the train split's label column"),
    ("test-label-unknown", "test: column label holds label 3, a class the train split"),
    ("class-absent", "train: column label has no image of class 1"),
    ("label-beyond-names", "train: column label holds label 3, but the data names 3 classes"),
    ("corrupt-image", "test row 5 (column image)"),
    ("mixed-size", "train row 3 (column image) is 4x4 pixels"),
    ("test-other-size", "test images are 4x4 pixels"),
    ("ragged-array", "train: column image holds rows of different shapes"),
    ("damaged-arrow", "datasets cannot read"),
])
def test_bad_hf_data_is_one_line_naming_what(tmp_path, case, says):
    root = tmp_path / "hf"
    if case == "no-image-column":
        saved(root, image_col="picture", class_label=False,
              train={"picture": [[1, 2]] * 12}, test={"picture": [[1, 2]] * 6})
    elif case == "no-label-column":
        saved(root, label_col="target", class_label=False)
    elif case == "test-lacks-label":
        saved(root, test={"label": None})
    elif case == "test-label-unknown":
        saved(root, class_label=False, test={"label": [0, 1, 2, 3, 0, 1]})
    elif case == "class-absent":
        saved(root, class_label=False, train={"label": [0, 2] * 6})
    elif case == "label-beyond-names":
        saved(root, train={"label": [0, 1, 2, 3] * 3})  # ClassLabel names 3 classes, 0..2
    elif case == "corrupt-image":
        saved(root, test={"image": encoded(6, last=b"not a png")})
    elif case == "mixed-size":
        saved(root, train={"image": images(3, seed=6) + images(9, size=(4, 4), seed=7)})
    elif case == "test-other-size":
        saved(root, test={"image": images(6, size=(4, 4), seed=8)})
    elif case == "ragged-array":
        saved(root, image_col="image", class_label=False,
              train={"image": [np.zeros((2, 2), np.uint8)] * 11 + [np.zeros((3, 3), np.uint8)]})
    elif case == "damaged-arrow":
        saved(root)
        arrow = next((root / "train").glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        D.load_hf(root)
    line = str(err.value)
    assert says in line and str(root) in line and "\n" not in line, line


def files(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*"))
            if p.is_file() and not p.name.startswith("catalog.db")}


def test_icl_init_with_hf_data_then_a_bad_one_leaves_the_workspace(tmp_path, monkeypatch):
    root = saved(tmp_path / "hf", n_train=30, n_test=6)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "--dataset", "hf", "--data-root", root, "--image-size", 4,
        "--arch", "tiny", "--method", "baseline", "--train-size", "24", "--val-size", "6",
        "--init-epochs", "1", *COMMON)
    assert len(list((ws / ".icl" / "data").glob("hf-*.npz"))) == 1
    with Store.open(ws) as st:
        data = st.experiment("baseline").config["data"]
    assert data["dataset"] == "hf" and data["image_size"] == 4
    from icl_cli.steps import common

    common._load_cached.cache_clear()  # as a new process: read from .icl/data, no datasets
    D._DECODED.clear()
    monkeypatch.setattr(D, "_import_datasets", lambda root: pytest.fail("decoded again"))
    icl("evaluate", "-w", ws, "--round", 0, *COMMON)
    before = files(ws)
    bad = saved(tmp_path / "bad", class_label=False, test={"label": [0, 1, 2, 7, 0, 1]})
    monkeypatch.undo()
    r = icl("init", "-w", ws, "-e", "bad", "--dataset", "hf", "--data-root", bad,
            "--arch", "tiny", *COMMON, code=None)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.code == 3 and len(lines) == 1, r
    assert f"{bad / 'test'}: column label holds label 7" in lines[0]
    assert files(ws) == before
    with Store.open(ws) as st:
        assert [e.name for e in st.experiments()] == ["baseline"]
