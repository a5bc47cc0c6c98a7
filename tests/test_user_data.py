"""A user's own data: a folder of images (``imagefolder``), arrays in an ``.npz`` file, and
the layout of a saved Hugging Face ``DatasetDict`` (``hf``) as far as it is read without
the ``datasets`` package (tests/test_user_data_hf.py reads real ones where it is installed).

Loading, the fingerprint over the files' bytes, the decoded folder kept in the
workspace's ``.icl/data`` (hash-checked), and every bad input as one line naming the file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cli import data as D
from icl_cli.config import ConfigError, DataConfig
from icl_cli.errors import DataError
from store.datacache import DataCache
from tests.kit import COMMON, icl


def write_image(path: Path, size=(8, 6), mode="RGB", seed=0) -> Path:
    """A random image of ``size`` (width, height) in ``mode``, by extension's format."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode in ("L", "1") else (h, w, len(mode))
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8),
                          mode=None if mode != "1" else "L")
    if mode == "1":
        img = img.convert("1")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def image_folder(root: Path, classes=("cat", "dog", "emu"), n_train=4, n_test=2, size=(8, 6),
                 mode="RGB", ext=".png") -> Path:
    """``root/train/<class>/i.png`` and ``root/test/<class>/i.png``, distinct random images."""
    seed = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                seed += 1
                write_image(root / split / c / f"{i}{ext}", size, mode, seed)
    return root


# ---------------------------------------------------------------- imagefolder


def test_image_folder_loads_classes_in_sorted_order(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("b", "a", "c"))
    (root / "train" / "a" / "notes.txt").write_text("not an image")  # skipped
    (root / "train" / "a" / ".hidden.png").write_bytes(b"x")  # skipped
    ds = D.load(DataConfig(dataset="imagefolder", root=str(root)))
    assert ds.classes == ("a", "b", "c") and ds.num_classes == 3
    assert ds.shape == (3, 6, 8) and ds.train.images.dtype == torch.uint8
    assert len(ds.train) == 12 and len(ds.test) == 6
    assert torch.bincount(ds.train.labels).tolist() == [4, 4, 4]
    # pixels as decoded by Pillow, channels first
    from PIL import Image

    first = np.array(Image.open(root / "train" / "a" / "0.png"))
    assert torch.equal(ds.train.images[0], torch.from_numpy(first).permute(2, 0, 1))


def test_grayscale_folder_has_one_channel_and_a_mix_has_three(tmp_path):
    gray = image_folder(tmp_path / "g", mode="L")
    assert D.load(DataConfig(dataset="imagefolder", root=str(gray))).shape == (1, 6, 8)
    write_image(gray / "train" / "cat" / "color.png", (8, 6), "RGB", 99)
    assert D.load(DataConfig(dataset="imagefolder", root=str(gray))).shape == (3, 6, 8)


def test_image_size_resizes_mixed_sizes_and_is_part_of_the_fingerprint(tmp_path):
    root = image_folder(tmp_path / "imgs")
    odd = write_image(root / "train" / "dog" / "big.png", (20, 11), "RGB", 7)
    with pytest.raises(DataError, match=re.escape(str(odd)) + ".*--image-size"):
        D.load(DataConfig(dataset="imagefolder", root=str(root)))
    a = D.load(DataConfig(dataset="imagefolder", root=str(root), image_size=5))
    b = D.load(DataConfig(dataset="imagefolder", root=str(root), image_size=4))
    assert a.shape == (3, 5, 5) and b.shape == (3, 4, 4)
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".webp"])
def test_other_formats(tmp_path, ext):
    root = image_folder(tmp_path / "imgs", ext=ext)
    assert D.load(DataConfig(dataset="imagefolder", root=str(root))).shape == (3, 6, 8)


def test_rgba_palette_and_16_bit_images_decode(tmp_path):
    from PIL import Image

    rgba = write_image(tmp_path / "a.png", (4, 3), "RGBA")
    assert D.decode_image(rgba).shape == (3, 4, 3)
    pal = Image.open(rgba).convert("RGB").convert("P")
    pal.save(tmp_path / "p.png")
    assert D.decode_image(tmp_path / "p.png").shape == (3, 4, 3)
    deep = np.full((3, 4), 0xAB12, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    a = D.decode_image(tmp_path / "d.png")
    assert a.shape == (3, 4, 1) and int(a[0, 0, 0]) == 0xAB


def test_fingerprint_follows_the_files_bytes_not_their_dates(tmp_path):
    root = image_folder(tmp_path / "imgs")
    cfg = DataConfig(dataset="imagefolder", root=str(root), val_size=3)
    first = D.load(cfg).fingerprint
    f = root / "train" / "cat" / "0.png"
    os.utime(f, ns=(1, 1))  # a touched file: same bytes, same fingerprint
    assert D.load(cfg).fingerprint == first
    write_image(f, (8, 6), "RGB", seed=1234)  # other pixels: another fingerprint
    assert D.load(cfg).fingerprint != first
    assert D.load(cfg.replace(seed=1)).fingerprint != D.load(cfg).fingerprint  # other subset


def test_the_same_folder_elsewhere_has_the_same_fingerprint(tmp_path):
    import shutil

    root = image_folder(tmp_path / "imgs")
    shutil.copytree(root, tmp_path / "copy")
    fp = [D.load(DataConfig(dataset="imagefolder", root=str(p))).fingerprint
          for p in (root, tmp_path / "copy")]
    assert fp[0] == fp[1]


def test_decoded_once_then_read_from_the_workspace_cache(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "imgs")
    ws = tmp_path / "ws"
    cfg = DataConfig(dataset="imagefolder", root=str(root))
    D._DECODED.clear()
    first = D.load(cfg, DataCache(ws))
    files = list((ws / ".icl" / "data").glob("imagefolder-*.npz"))
    assert len(files) == 1
    name = files[0].name.split(".")
    from store.workspace import sha256_file

    assert name[1] == sha256_file(files[0])  # the file's sha256 is in its name
    D._DECODED.clear()  # a new process: the arrays come from the file, nothing decoded
    monkeypatch.setattr(D, "decode_image", lambda *a: pytest.fail("decoded again"))
    again = D.load(cfg, DataCache(ws))
    assert torch.equal(again.train.images, first.train.images)
    assert again.fingerprint == first.fingerprint and again.classes == first.classes


def test_a_damaged_cache_file_is_dropped_and_decoded_again(tmp_path):
    root = image_folder(tmp_path / "imgs")
    ws = tmp_path / "ws"
    cfg = DataConfig(dataset="imagefolder", root=str(root))
    D._DECODED.clear()
    first = D.load(cfg, DataCache(ws))
    (path,) = (ws / ".icl" / "data").glob("*.npz")
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 0xFF
    path.write_bytes(bytes(blob))
    D._DECODED.clear()
    again = D.load(cfg, DataCache(ws))
    assert torch.equal(again.train.images, first.train.images)
    (fresh,) = (ws / ".icl" / "data").glob("*.npz")
    from store.workspace import sha256_file

    assert fresh.name.split(".")[1] == sha256_file(fresh)


def test_cache_put_replaces_and_sweeps_dead_temporaries(tmp_path):
    cache = DataCache(tmp_path)
    cache.put("k1", {"a": np.arange(3)})
    dead = cache.folder / "k1.x.npz.tmp-999999999-0123abcd"
    dead.write_bytes(b"half")
    cache.put("k1", {"a": np.arange(4)})
    assert [p.name.split(".")[0] for p in cache.folder.iterdir()] == ["k1"]
    assert cache.get("k1")["a"].tolist() == [0, 1, 2, 3] and cache.get("k2") is None
    with pytest.raises(Exception, match="invalid data cache key"):
        cache.get("../x")


@pytest.mark.parametrize("case", ["no-root", "no-test", "one-class", "flat", "empty-class",
                                  "empty-test-class", "unknown-test-class", "corrupt",
                                  "truncated", "mixed-size"])
def test_bad_image_folders_are_one_line_naming_the_file(tmp_path, case):
    root = tmp_path / "imgs"
    if case != "no-root":
        image_folder(root)
    culprit = root
    if case == "no-test":
        import shutil

        shutil.rmtree(root / "test")
        culprit = root
    elif case == "one-class":
        import shutil

        for c in ("dog", "emu"):
            shutil.rmtree(root / "train" / c)
            shutil.rmtree(root / "test" / c)
        culprit = root / "train"
    elif case == "flat":
        import shutil

        shutil.rmtree(root / "train")
        write_image(root / "train" / "0.png")
        culprit = root / "train"
    elif case == "empty-class":
        (root / "train" / "fox").mkdir()
        culprit = root / "train" / "fox"
    elif case == "empty-test-class":
        for f in (root / "test" / "emu").iterdir():
            f.unlink()
        culprit = root / "test" / "emu"
    elif case == "unknown-test-class":
        culprit = write_image(root / "test" / "yak" / "0.png").parent
    elif case == "corrupt":
        culprit = root / "train" / "dog" / "1.png"
        culprit.write_bytes(b"not a png at all")
    elif case == "truncated":
        culprit = root / "test" / "cat" / "0.png"
        culprit.write_bytes(culprit.read_bytes()[:60])
    elif case == "mixed-size":
        culprit = write_image(root / "test" / "emu" / "9.png", (9, 9))
    with pytest.raises(DataError) as err:
        D.load(DataConfig(dataset="imagefolder", root=str(root)))
    line = str(err.value)
    assert "\n" not in line and str(culprit) in line, line


def test_image_size_applies_to_a_users_data_only():
    with pytest.raises(ConfigError, match="--image-size"):
        DataConfig(dataset="cifar10", image_size=32)
    with pytest.raises(ConfigError, match="--image-size"):
        DataConfig(dataset="npz", image_size=0)


# ---------------------------------------------------------------- npz


def npz_file(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 256, (12, 5, 6, 3), dtype=np.uint8),
            "y_train": np.arange(12) % 3,
            "x_test": rng.integers(0, 256, (6, 5, 6, 3), dtype=np.uint8),
            "y_test": np.arange(6) % 3}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_npz_layouts_and_types(tmp_path):
    hwc = npz_file(tmp_path / "hwc.npz")
    ds = D.load(DataConfig(dataset="npz", root=str(hwc)))
    assert ds.shape == (3, 5, 6) and ds.num_classes == 3 and len(ds.test) == 6
    x = np.load(hwc)["x_train"]
    chw = npz_file(tmp_path / "chw.npz", x_train=x.transpose(0, 3, 1, 2),
                   x_test=np.load(hwc)["x_test"].transpose(0, 3, 1, 2))
    assert torch.equal(D.load(DataConfig(dataset="npz", root=str(chw))).train.images,
                       ds.train.images)
    flt = npz_file(tmp_path / "f.npz", x_train=x.astype(np.float32) / 255,
                   x_test=np.load(hwc)["x_test"].astype(np.float64) / 255,
                   y_train=(np.arange(12) % 3).astype(np.float32)[:, None])
    assert torch.equal(D.load(DataConfig(dataset="npz", root=str(flt))).train.images,
                       ds.train.images)
    gray = npz_file(tmp_path / "g.npz", x_train=x[..., 0].astype(np.int64),
                    x_test=np.load(hwc)["x_test"][..., 0])
    assert D.load(DataConfig(dataset="npz", root=str(gray))).shape == (1, 5, 6)
    named = npz_file(tmp_path / "n.npz", classes=np.array(["a", "b", "c"]))
    assert D.load(DataConfig(dataset="npz", root=str(named))).classes == ("a", "b", "c")


def test_npz_resize_and_fingerprint_over_the_bytes(tmp_path):
    f = npz_file(tmp_path / "d.npz")
    small = D.load(DataConfig(dataset="npz", root=str(f), image_size=4))
    assert small.shape == (3, 4, 4)
    fp = D.load(DataConfig(dataset="npz", root=str(f))).fingerprint
    assert fp != small.fingerprint
    npz_file(f, y_test=np.array([0, 1, 2, 2, 1, 0]))
    assert D.load(DataConfig(dataset="npz", root=str(f))).fingerprint != fp


@pytest.mark.parametrize("arrays, says", [
    ({"y_test": None}, "lacks y_test"),
    ({"x_train": np.zeros((12, 5, 6, 4), np.uint8)}, "x_train has shape"),
    ({"x_train": np.zeros((12, 3, 5, 3), np.uint8)}, "both could be channels"),
    ({"x_train": np.full((12, 5, 6, 3), 2.0)}, r"x_train: float pixels must lie in \[0, 1\]"),
    ({"x_train": np.full((12, 5, 6, 3), np.nan)}, "x_train holds NaN"),
    ({"x_test": np.full((6, 5, 6, 3), 300)}, "x_test: integer pixels must lie in 0..255"),
    ({"x_test": np.zeros((6, 7, 6, 3), np.uint8)}, "x_test images"),
    ({"y_train": np.arange(12) % 3 + 1}, "y_train has no image of class 0"),
    ({"y_train": np.arange(12) % 3 - 1}, "y_train holds label -1"),
    ({"y_test": np.array([0, 1, 2, 3, 0, 1])}, "y_test holds label 3"),
    ({"y_test": np.array([0, 1, 2])}, "y_test holds 3 labels for 6 images"),
    ({"y_train": np.eye(3)[np.arange(12) % 3]}, "one-hot"),
    ({"y_train": np.arange(12) % 3 + 0.5}, "non-integer labels"),
    ({"classes": np.array(["a"])}, "classes names 1 classes"),
])
def test_bad_npz_is_one_line_naming_the_file_and_array(tmp_path, arrays, says):
    f = npz_file(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=says) as err:
        D.load(DataConfig(dataset="npz", root=str(f)))
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_npz_that_is_not_an_npz(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(DataError, match="does not exist"):
        D.load(DataConfig(dataset="npz", root=str(missing)))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable .npz"):
        D.load(DataConfig(dataset="npz", root=str(tmp_path / "junk.npz")))
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match="holds one array"):
        D.load(DataConfig(dataset="npz", root=str(tmp_path / "one.npy")))
    np.savez(tmp_path / "obj.npz", x_train=np.array([{}], dtype=object), y_train=[0],
             x_test=[0], y_test=[0])
    with pytest.raises(DataError, match="cannot be read"):  # nothing is unpickled
        D.load(DataConfig(dataset="npz", root=str(tmp_path / "obj.npz")))


# ---------------------------------------------------------------- a saved Hugging Face dataset


def saved_layout(root: Path, splits=("train", "test")) -> Path:
    """The files ``DatasetDict.save_to_disk`` writes, with placeholder Arrow files."""
    root.mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split in splits:
        (root / split).mkdir()
        (root / split / "state.json").write_text(
            json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
        (root / split / "data-00000-of-00001.arrow").write_bytes(split.encode())
    return root


@pytest.mark.parametrize("case, says", [
    ("no-root", "does not exist"),
    ("one-split", "one split (a Dataset), not a DatasetDict"),
    ("no-test", "lists the splits train, validation, no test"),
    ("no-arrow", "does not exist (named in"),
    ("bad-state", "is not readable JSON"),
])
def test_a_folder_that_is_no_saved_dataset_dict_is_one_line_naming_it(tmp_path, case, says):
    root = tmp_path / "hf"
    culprit = root
    if case == "one-split":
        root.mkdir()
        (root / "state.json").write_text("{}")
    elif case == "no-test":
        culprit = saved_layout(root, ("train", "validation")) / "dataset_dict.json"
    elif case == "no-arrow":
        culprit = saved_layout(root) / "test" / "data-00000-of-00001.arrow"
        culprit.unlink()
    elif case == "bad-state":
        culprit = saved_layout(root) / "train" / "state.json"
        culprit.write_text("{")
    with pytest.raises(DataError, match=re.escape(says)) as err:
        D.load_hf(root)
    assert str(culprit) in str(err.value) and "\n" not in str(err.value)


def test_hf_without_the_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    root = saved_layout(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as where the extra is not installed
    D._DECODED.clear()
    with pytest.raises(DataError, match=re.escape("pip install 'icl-toolkit[hf]'")) as err:
        D.load_hf(root)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_icl_init_dataset_hf_without_the_extra_is_one_line_exit_3(tmp_path, monkeypatch):
    root = saved_layout(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as where the extra is not installed
    D._DECODED.clear()
    r = icl("init", "-w", tmp_path / "ws", "--dataset", "hf", "--data-root", root,
            "--arch", "tiny", *COMMON, code=None)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.code == 3 and len(lines) == 1, r
    assert "pip install 'icl-toolkit[hf]'" in lines[0] and str(root) in lines[0]
    assert not (tmp_path / "ws").exists()
