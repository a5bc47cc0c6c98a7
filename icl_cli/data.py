"""Datasets: the embedded MNIST subset, IDX folders, CIFAR-10 and SVHN through torchvision,
and a user's own: a folder of images (``imagefolder``), arrays in an ``.npz`` file, or a
Hugging Face ``DatasetDict`` saved with ``save_to_disk`` (``hf``, the optional ``datasets``).

Everything is held as uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``; ``to_input``
maps a batch to the network's input space [-1, 1] and ``augment`` applies the paper's CIFAR
augmentation there. Nothing here downloads unless ``DataConfig.download`` is set.

Example:
    >>> ds = load(DataConfig(dataset="mnist-embedded", train_size=500, val_size=100))
    >>> len(ds.train), len(ds.val), ds.shape, ds.num_classes
    (500, 100, (1, 28, 28), 10)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from icl_cli.config import DataConfig
from icl_cli.errors import DataError

EMBEDDED_DIR = Path(__file__).parent / "embedded"
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + (
    "cifar-10-batches-py/test_batch",
)
SVHN_FILES = ("train_32x32.mat", "extra_32x32.mat", "test_32x32.mat")
PIXEL_SCALE = 2.0
"""One unit of [0, 1] pixel space is 2 units of input space (``to_input``): an FGSM budget
of eps in pixel space is ``eps * PIXEL_SCALE`` on the network's input."""


@dataclass(frozen=True)
class Split:
    """One part of a dataset: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset; ``val`` is None when no validation split was asked for."""

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    fingerprint: str = ""  # see data_fingerprint()
    classes: tuple[str, ...] = ()  # class k's name, where the data has names


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one uint8 IDX file (``.gz`` or raw) into an array shaped as its header says.

    Images (magic 2051) come back (N, H, W), labels (magic 2049) (N,). Raises DataError on a
    bad magic, a non-uint8 type, a short header, a truncated or overlong body, or bad gzip.
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4:
        raise DataError(f"IDX file {path} is too short ({len(data)} bytes) to hold a header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or ndim == 0:
        raise DataError(f"{path} is not an IDX file (magic {magic:#010x}, expected 0x0000080N)")
    if dtype != 0x08:
        raise DataError(f"IDX file {path} holds type {dtype:#04x}; only uint8 (0x08) is supported")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"IDX file {path} is truncated inside its header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body, size = len(data) - 4 - 4 * ndim, int(np.prod(dims, dtype=np.int64))
    if body != size:
        what = "truncated" if body < size else "overlong"
        raise DataError(
            f"IDX file {path} is {what}: header says shape {dims} ({size} bytes), "
            f"body has {body} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _find_idx(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def load_idx_folder(
    root: str | Path,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load an MNIST-layout folder: the four torchvision-named IDX files, ``.gz`` or raw,
    in ``root`` or ``root/MNIST/raw``.

    Returns ``(train_images, train_labels, test_images, test_labels)``: images uint8
    (N, 1, H, W), labels int64 (N,).
    """
    root = Path(root).expanduser()
    wanted = ", ".join(f"{n}[.gz]" for n in IDX_NAMES)
    if not root.is_dir():
        raise DataError(f"IDX folder {root} does not exist (expected {wanted})")
    paths = {name: _find_idx(root, name) for name in IDX_NAMES}
    missing = [f"{n}[.gz]" for n, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"IDX folder {root} is missing {', '.join(missing)} (looked in {root} and "
            f"{root / 'MNIST' / 'raw'})"
        )
    out = []
    for image_name, label_name in (IDX_NAMES[:2], IDX_NAMES[2:]):
        images, labels = read_idx(paths[image_name]), read_idx(paths[label_name])
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{paths[image_name]} / {paths[label_name]}: expected images (N, H, W) and "
                f"labels (N,), got shapes {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{paths[image_name]} has {len(images)} images but {paths[label_name]} has "
                f"{len(labels)} labels"
            )
        out += [torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(
            f"IDX folder {root}: train images are {tuple(out[0].shape[2:])}, "
            f"test images {tuple(out[2].shape[2:])}"
        )
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------- torchvision


def _require_files(root: Path, files: tuple[str, ...], title: str) -> None:
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"{title} not found in {root}: missing {', '.join(missing)} "
            f"(looked for {', '.join(files)}); pass --download to fetch it when online"
        )


def _torchvision(make, title: str, root: Path):
    try:
        return make()
    except Exception as e:  # a failed download or an md5 mismatch
        raise DataError(f"{title} in {root} could not be loaded: {e}".replace("\n", " ")) from None


def _cifar10(root: Path, download: bool):
    if not download:
        _require_files(root, CIFAR10_FILES, "CIFAR-10")
    from torchvision.datasets import CIFAR10

    out = []
    for train in (True, False):
        ds = _torchvision(
            lambda t=train: CIFAR10(str(root), train=t, download=download), "CIFAR-10", root
        )
        out += [
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets),
        ]
    return out


def _svhn(root: Path, download: bool):
    if not download:
        _require_files(root, SVHN_FILES, "SVHN")
    if importlib.util.find_spec("scipy") is None:
        raise DataError("SVHN is stored as .mat files, which need scipy: pip install scipy")
    from torchvision.datasets import SVHN

    parts = {}
    for split in ("train", "extra", "test"):
        ds = _torchvision(lambda s=split: SVHN(str(root), split=s, download=download), "SVHN", root)
        parts[split] = (torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long())
    train = [torch.cat([parts["train"][i], parts["extra"][i]]) for i in range(2)]
    return [*train, *parts["test"]]


def _fake(seed: int, n_train: int = 200, n_test: int = 100, num_classes: int = 10):
    """Deterministic random 3x32x32 images with a faint per-class template (learnable)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (num_classes, 3, 32, 32), generator=g).float()
    out = []
    for n in (n_train, n_test):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randint(0, 256, (n, 3, 32, 32), generator=g).float()
        out += [(0.5 * templates[labels] + 0.5 * noise).round().to(torch.uint8), labels]
    return out


# --------------------------------------------------------------------------- a user's data

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif",
                    ".tiff", ".webp")
DECODER = "icl-decode-v1"  # bump when decoding changes what a folder's arrays hold
CACHED_DATASETS = ("imagefolder", "hf")  # decoded once, kept in a ``DecodedCache``
Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DecodedCache(Protocol):
    """Where decoded arrays are kept between processes (``store.datacache.DataCache``)."""

    def get(self, key: str) -> dict[str, np.ndarray] | None: ...

    def has(self, key: str) -> bool: ...

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> object: ...


_FILE_SHA: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): sha256, this process
_DECODED: dict[str, dict[str, np.ndarray]] = {}  # key: arrays, the last few of this process


def _file_sha256(path: str) -> str:
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns)
    if memo not in _FILE_SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        _FILE_SHA[memo] = h.hexdigest()
    return _FILE_SHA[memo]


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    """Image files under ``folder`` (subfolders too), as sorted paths relative to it."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(here, folder)
        found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                  for name in files
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes of an image folder (``train/``'s class folders, sorted: class k is the
    k-th name) and its images as (path relative to ``root``, class), train then test.

    Raises DataError naming the folder: no ``train/`` or ``test/``, fewer than 2 classes,
    a class folder without images, a test class that ``train/`` does not have.
    """
    layout = f"{root}/train/<class>/*.png and {root}/test/<class>/*.png, one folder a class"
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (expected {layout})")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"image folder {root} has no {split}/ folder (expected {layout})")
    classes = _visible_dirs(root / "train")
    if len(classes) < 2:
        loose = _images_in(root / "train")
        what = ("images but no class folders" if loose and not classes else
                f"{len(classes)} class folder{'s' * (len(classes) != 1)}")
        raise DataError(f"{root / 'train'} holds {what}: a classifier needs 2 or more classes "
                        f"(expected {layout})")
    test_classes = _visible_dirs(root / "test")
    unknown = [c for c in test_classes if c not in classes]
    if unknown:
        raise DataError(f"{root / 'test' / unknown[0]} is a class the training set does not "
                        f"have (no {root / 'train' / unknown[0]}; train classes: "
                        f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
    if not test_classes:
        raise DataError(f"{root / 'test'} holds no class folders (expected {layout})")
    files: list[tuple[str, int]] = []
    for split, names in (("train", classes), ("test", test_classes)):
        for name in names:
            images = _images_in(root / split / name)
            if not images:
                raise DataError(f"class folder {root / split / name} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
            files += [(f"{split}/{name}/{rel}", classes.index(name)) for rel in images]
    return classes, files


def load_image_folder(root: Path, image_size: int | None = None,
                      cache: DecodedCache | None = None) -> tuple[Parts, list[str], str]:
    """A torchvision ``ImageFolder`` layout: ``root/train/<class>/*`` and
    ``root/test/<class>/*`` (any of ``IMAGE_EXTENSIONS``, subfolders included; names
    starting with a dot skipped). Class k is the k-th ``train/`` folder in sorted order.

    Images are decoded as 8-bit grayscale (1 channel) when every image is grayscale, else
    as RGB (3 channels; alpha dropped, palettes expanded); 16-bit grayscale keeps its high
    byte. Every image must have the size of the first unless ``image_size`` resizes all to
    N x N (bilinear, antialiased).

    Returns ``((train_x, train_y, test_x, test_y), classes, digest)``: images uint8
    (N, C, H, W), labels int64, and the sha256 over every file's name, class and bytes
    (what the experiment's fingerprint is made of). The files are hashed at every call
    (a changed file is always seen); the decoding is done once and kept in ``cache`` (and
    in this process) under a key made of that digest, ``image_size`` and ``DECODER``.
    Raises DataError naming the file or folder at fault.
    """
    root = Path(root).expanduser()
    classes, files = list_image_folder(root)
    h = hashlib.sha256(f"{DECODER}:{json.dumps(classes)}".encode())
    for rel, label in files:
        h.update(f"{rel}\0{label}\0{_file_sha256(str(root / rel))}\n".encode())
    digest = h.hexdigest()
    key = "imagefolder-" + hashlib.sha256(f"{digest}:{image_size}".encode()).hexdigest()[:40]
    arrays = _decoded(key, lambda: _decode_folder(root, classes, files, image_size), cache)
    return _parts(arrays), [str(c) for c in arrays["classes"]], digest


def _decoded(key: str, decode: Callable[[], dict[str, np.ndarray]],
             cache: DecodedCache | None) -> dict[str, np.ndarray]:
    """The arrays under ``key``: from this process, else from ``cache``, else ``decode()``
    (then put in ``cache``); the last two keys stay in this process."""
    arrays = _DECODED.get(key)
    if arrays is None and cache is not None:
        arrays = cache.get(key)  # hash-checked: a damaged file is dropped, not used
    if arrays is None:
        arrays = decode()
    if cache is not None and not cache.has(key):
        cache.put(key, arrays)
    _DECODED[key] = arrays
    while len(_DECODED) > 2:
        _DECODED.pop(next(iter(_DECODED)))
    return arrays


def _parts(arrays: dict[str, np.ndarray]) -> Parts:
    return tuple(torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "test_x", "test_y"))


def _stacked(images: Iterable[tuple[str, np.ndarray]]) -> np.ndarray:
    """(name, uint8 (H, W, C)) pairs -> uint8 (N, C, H, W), C = 3 when any image has 3
    channels (a grey one repeated). DataError naming the first image whose size differs
    from the first image's (``images`` is read lazily: nothing after it is decoded)."""
    out, first = [], None
    for name, a in images:
        if first is None:
            first = (name, a.shape[:2])
        elif a.shape[:2] != first[1]:
            (h0, w0), (h, w) = first[1], a.shape[:2]
            raise DataError(f"{name} is {w}x{h} pixels, {first[0]} is {w0}x{h0}: the images "
                            "differ in size; pass --image-size N to resize every image to N x N")
        out.append(a)
    channels = max(a.shape[2] for a in out)
    x = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in out])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, C, H, W)


def _decode_folder(root: Path, classes: list[str], files: list[tuple[str, int]],
                   image_size: int | None) -> dict[str, np.ndarray]:
    x = _stacked((str(root / rel), decode_image(root / rel, image_size)) for rel, _ in files)
    y = np.array([label for _, label in files], dtype=np.int64)
    n = sum(rel.startswith("train/") for rel, _ in files)
    return {"train_x": x[:n], "train_y": y[:n], "test_x": x[n:], "test_y": y[n:],
            "classes": np.array(classes, dtype=str)}


_GRAY = ("1", "L", "LA", "La")
_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(path: Path | io.BytesIO, image_size: int | None = None,
                 name: str | None = None) -> np.ndarray:
    """One image file (or its bytes) as uint8 (H, W, 1) (grayscale) or (H, W, 3) (anything
    else, as RGB), resized to ``image_size`` x ``image_size`` when given. DataError naming
    the file (``name``, default ``path``) when it cannot be decoded (corrupt, truncated, not
    an image, 32-bit pixels)."""
    from PIL import Image

    name = str(path) if name is None else name
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F"):
                raise DataError(f"{name} has 32-bit pixels (mode {im.mode}): save it as 8-bit "
                                "grayscale or RGB")
            if im.mode in _GRAY16:
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            else:
                im = im.convert("L" if im.mode in _GRAY else "RGB")
            if image_size is not None:
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # PIL's UnidentifiedImageError, OSError (truncated), ...
        text = str(exc).replace(f" {path}", "") if isinstance(path, io.BytesIO) else str(exc)
        text = " ".join(text.split())[:160]
        raise DataError(f"cannot decode image {name}: {type(exc).__name__}: {text}") from None
    return a[:, :, None] if a.ndim == 2 else a


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path, image_size: int | None = None) -> tuple[Parts, list[str], str]:
    """Arrays ``x_train, y_train, x_test, y_test`` in one ``.npz`` file (``np.savez``), and
    optionally ``classes`` (K names).

    Images: (N, H, W) (grayscale), (N, C, H, W) or (N, H, W, C) with C = 1 or 3; uint8, or
    integers in 0..255, or floats in [0, 1] (stored as round(255 x)). Labels: integers
    (N,) or (N, 1) in 0..K-1 (integral floats are accepted), every training class present;
    test labels among the training classes. ``image_size`` resizes every image to N x N
    (bilinear, antialiased). Nothing is unpickled.

    Returns ``((train_x, train_y, test_x, test_y), classes, digest)``: images uint8
    (N, C, H, W), labels int64, and the sha256 of the file's bytes. Raises DataError
    naming the file and the array at fault.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist (expected arrays "
                        f"{', '.join(NPZ_KEYS)}, as np.savez writes them)")
    blob = path.read_bytes()
    try:
        z = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds one array; icl needs an .npz with "
                        f"{', '.join(NPZ_KEYS)} (np.savez(path, x_train=..., ...))")
    with z:
        missing = [k for k in NPZ_KEYS if k not in z.files]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)} (it holds "
                            f"{', '.join(z.files) or 'no arrays'}; expected {', '.join(NPZ_KEYS)})")
        try:
            raw = {k: z[k] for k in (*NPZ_KEYS, *(["classes"] if "classes" in z.files else []))}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: an array cannot be read ({exc})") from None
    xs = [_npz_images(raw[k], f"{path}: {k}", image_size) for k in ("x_train", "x_test")]
    ys = [_npz_labels(raw[k], len(x), f"{path}: {k}") for k, x in zip(
        ("y_train", "y_test"), xs, strict=True)]
    if len(ys[0]) and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(f"{path}: x_train images are {tuple(xs[0].shape[1:])} (C, H, W), x_test "
                        f"images {tuple(xs[1].shape[1:])}")
    k = _classes_present(ys[0], ys[1], f"{path}: y_train", f"{path}: y_test", "y_train")
    classes = [str(c) for c in raw.get("classes", np.array([])).reshape(-1)]
    if classes and len(classes) != k:
        raise DataError(f"{path}: classes names {len(classes)} classes, y_train has {k}")
    parts = (torch.from_numpy(xs[0]), torch.from_numpy(ys[0]),
             torch.from_numpy(xs[1]), torch.from_numpy(ys[1]))
    return parts, classes, hashlib.sha256(blob).hexdigest()


def _classes_present(y_train: np.ndarray, y_test: np.ndarray, train: str, test: str,
                     train_name: str, names: list[str] | None = None) -> int:
    """K, the number of classes: ``len(names)`` when the data names its classes, else the
    largest training label + 1. DataError, its line starting with ``train`` or ``test``
    (what the labels are, e.g. "d.npz: y_train"), unless every class 0..K-1 has a training
    image and every test label is one of them."""
    k = int(y_train.max()) + 1 if len(y_train) else 0
    if names and k > len(names):
        raise DataError(f"{train} holds label {k - 1}, but the data names {len(names)} classes "
                        f"(0..{len(names) - 1})")
    k = len(names) if names else k
    absent = sorted(set(range(k)) - set(np.unique(y_train).tolist()))
    if absent:
        raise DataError(f"{train} has no image of class {absent[0]} (labels must be the "
                        f"classes 0..K-1, each present; here K = {k})")
    if len(y_test) and int(y_test.max()) >= k:
        raise DataError(f"{test} holds label {int(y_test.max())}, a class {train_name} does "
                        f"not have (0..{k - 1})")
    return k


def _npz_images(a: np.ndarray, what: str, image_size: int | None) -> np.ndarray:
    """Images as uint8 (N, C, H, W), from any accepted layout and type (``load_npz``)."""
    layouts = "(N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        first, last = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
        if first == last:
            raise DataError(f"{what} has shape {a.shape}: expected {layouts}"
                            + (" (both could be channels: which?)" if first else ""))
        if last:
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{what} has shape {a.shape}: expected {layouts}")
    if a.dtype == np.uint8:
        out = a
    elif a.dtype.kind in "iu":
        low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if low < 0 or high > 255:
            raise DataError(f"{what}: integer pixels must lie in 0..255, got {low}..{high}")
        out = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if a.size and not np.isfinite(a).all():
            raise DataError(f"{what} holds NaN or infinite pixels")
        low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise DataError(f"{what}: float pixels must lie in [0, 1], got {low:g}..{high:g} "
                            "(divide by 255, or store uint8)")
        out = np.rint(a * 255.0).astype(np.uint8)
    else:
        raise DataError(f"{what} holds {a.dtype} values: pixels must be uint8, integers in "
                        "0..255 or floats in [0, 1]")
    out = np.ascontiguousarray(out)
    if image_size is not None and out.shape[2:] != (image_size, image_size):
        out = _resize(out, image_size)
    return out


def _resize(x: np.ndarray, size: int, batch: int = 1024) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C, size, size): bilinear, antialiased, rounded."""
    out = [F.interpolate(torch.from_numpy(x[i:i + batch]).float(), size=(size, size),
                         mode="bilinear", antialias=True, align_corners=False)
           .round().clamp(0, 255).to(torch.uint8).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, x.shape[1], size, size), np.uint8)


def _npz_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels as int64 (N,) (``load_npz``)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}: expected one class index per image, "
                        "(N,) or (N, 1) (one-hot labels: store y.argmax(1))")
    if y.dtype.kind == "f" and y.size and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{what} holds non-integer labels: expected class indices 0..K-1")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{what} holds {y.dtype} values: expected integer class indices")
    if len(y) != n:
        raise DataError(f"{what} holds {len(y)} labels for {n} images")
    if y.size and y.min() < 0:
        raise DataError(f"{what} holds label {int(y.min())}: labels must be 0..K-1")
    return np.ascontiguousarray(y.astype(np.int64))


# --------------------------------------------------------------------------- Hugging Face

HF_SPLITS = ("train", "test")
HF_IMAGE_COLUMNS = ("image", "img")  # the image column when not exactly one is an Image
HF_LABEL_COLUMNS = ("label", "labels")  # the label column when not exactly one is a ClassLabel
HF_EXTRA = "pip install 'icl-toolkit[hf]'"
_HF_SAVE = "DatasetDict(train=..., test=...).save_to_disk(DIR)"


def _json_object(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} holds a JSON {type(doc).__name__}, not the object "
                        "save_to_disk writes")
    return doc


def list_hf_files(root: Path) -> list[str]:
    """The files ``datasets.load_from_disk`` reads of a ``DatasetDict`` saved in ``root``,
    relative to it and sorted: ``dataset_dict.json`` and, of the ``train`` and ``test``
    splits, ``state.json``, ``dataset_info.json`` and the Arrow files ``state.json`` names.
    Read without the ``datasets`` package. DataError naming the folder or file: not a
    saved DatasetDict, a split or a file missing."""
    if not root.is_dir():
        raise DataError(f"Hugging Face dataset folder {root} does not exist (expected what "
                        f"{_HF_SAVE} writes)")
    index = root / "dataset_dict.json"
    if not index.is_file():
        what = ("one split (a Dataset), not a DatasetDict" if (root / "state.json").is_file()
                else "no dataset_dict.json")
        raise DataError(f"{root} holds {what}: icl reads the train and test splits of what "
                        f"{_HF_SAVE} writes")
    splits = _json_object(index).get("splits")
    if not isinstance(splits, list):
        raise DataError(f"{index} has no list of splits (\"splits\": [\"train\", \"test\"])")
    missing = [s for s in HF_SPLITS if s not in splits]
    if missing:
        raise DataError(f"{index} lists the splits {', '.join(map(str, splits)) or 'none'}, "
                        f"no {' and no '.join(missing)}: icl needs a train and a test split "
                        "(dd['test'] = dd.pop('validation') renames one; save again)")
    files = {"dataset_dict.json"}
    for split in HF_SPLITS:
        state = root / split / "state.json"
        if not state.is_file():
            raise DataError(f"{state} does not exist: the {split} split is not saved "
                            f"(expected what {_HF_SAVE} writes)")
        entries = _json_object(state).get("_data_files")
        names = ([e.get("filename") for e in entries if isinstance(e, dict)]
                 if isinstance(entries, list) else [])
        if not names or not all(isinstance(n, str) and n and Path(n).name == n for n in names):
            raise DataError(f"{state} names no Arrow files of the {split} split (_data_files)")
        for name in ("dataset_info.json", *names):
            if not (root / split / name).is_file():
                if name == "dataset_info.json":
                    continue  # optional: the features are in the Arrow files too
                raise DataError(f"{root / split / name} does not exist (named in {state})")
            files.add(f"{split}/{name}")
        files.add(f"{split}/state.json")
    return sorted(files)


def load_hf(root: Path, image_size: int | None = None,
            cache: DecodedCache | None = None) -> tuple[Parts, list[str], str]:
    """The ``train`` and ``test`` splits of a Hugging Face ``datasets.DatasetDict`` saved
    in ``root`` with ``save_to_disk`` (the optional ``datasets`` package:
    ``pip install 'icl-toolkit[hf]'``).

    Columns: the image column is the one of type ``datasets.Image`` (when not exactly one
    is, the one named ``image`` or ``img``; an array column in a layout ``load_npz`` takes
    works too), the label column the one of type ``datasets.ClassLabel``, whose names are
    the classes (when not exactly one is, ``label`` or ``labels``, integers); other columns
    are ignored. Images are decoded as in ``load_image_folder`` (Pillow, from the bytes
    saved with the dataset), labels checked as in ``load_npz``.

    Returns ``((train_x, train_y, test_x, test_y), classes, digest)``: images uint8
    (N, C, H, W), labels int64, and the sha256 over the saved files' names and bytes
    (``list_hf_files``). As for an image folder, the files are hashed at every call and
    the decoding is done once and kept in ``cache``: only decoding imports ``datasets``.
    Raises DataError naming the folder, split, column or row at fault.
    """
    root = Path(root).expanduser()
    files = list_hf_files(root)
    h = hashlib.sha256(f"{DECODER}:hf".encode())
    for rel in files:
        h.update(f"{rel}\0{_file_sha256(str(root / rel))}\n".encode())
    digest = h.hexdigest()
    key = "hf-" + hashlib.sha256(f"{digest}:{image_size}".encode()).hexdigest()[:40]
    arrays = _decoded(key, lambda: _decode_hf(root, image_size), cache)
    return _parts(arrays), [str(c) for c in arrays["classes"]], digest


def _import_datasets(root: Path):
    try:
        import datasets
    except ImportError as exc:
        if exc.name == "datasets":
            raise DataError(f"--dataset hf reads {root} with Hugging Face's datasets package, "
                            f"which is not installed: {HF_EXTRA}") from None
        raise DataError(f"the datasets package cannot be imported ({exc}): {HF_EXTRA} "
                        "installs what it needs") from None
    return datasets


def _decode_hf(root: Path, image_size: int | None) -> dict[str, np.ndarray]:
    hf = _import_datasets(root)
    bars = hf.is_progress_bar_enabled()
    hf.disable_progress_bars()  # icl's stderr shows its own progress, not tqdm's
    try:
        dd = hf.load_from_disk(str(root))
        if not isinstance(dd, hf.DatasetDict):
            raise DataError(f"{root} holds one split, not a DatasetDict: icl reads the train "
                            f"and test splits of what {_HF_SAVE} writes")
        image, label, names = _hf_columns(hf, dd["train"], root / "train")
        xs, ys = [], []
        for split in HF_SPLITS:
            ds, where = dd[split], root / split
            for what, col in (("image", image), ("label", label)):
                if col not in ds.column_names:
                    raise DataError(f"{where} has no column {col} (the train split's {what} "
                                    f"column; its columns: {', '.join(ds.column_names)})")
            if ds.num_rows == 0:
                raise DataError(f"{where} holds no rows")
            xs.append(_hf_images(hf, ds, image, where, image_size))
            ys.append(_npz_labels(_hf_array(ds, label, where), ds.num_rows,
                                  f"{where}: column {label}"))
    except DataError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid (a damaged file), OSError, ...
        text = " ".join(str(exc).split())[:200]
        raise DataError(f"datasets cannot read {root}: {type(exc).__name__}: {text}") from None
    finally:
        if bars:
            hf.enable_progress_bars()
    (_, h0, w0), (_, h1, w1) = xs[0].shape[1:], xs[1].shape[1:]
    if (h0, w0) != (h1, w1):
        raise DataError(f"{root / 'test'} images are {w1}x{h1} pixels, {root / 'train'} images "
                        f"{w0}x{h0}: pass --image-size N to resize every image to N x N")
    c = max(x.shape[1] for x in xs)
    xs = [np.ascontiguousarray(np.repeat(x, c // x.shape[1], axis=1)) for x in xs]
    _classes_present(ys[0], ys[1], f"{root / 'train'}: column {label}",
                     f"{root / 'test'}: column {label}", "the train split", names)
    return {"train_x": xs[0], "train_y": ys[0], "test_x": xs[1], "test_y": ys[1],
            "classes": np.array(names or [], dtype=str)}


def _hf_columns(hf, ds, where: Path) -> tuple[str, str, list[str] | None]:
    """(image column, label column, class names or None) of a split (``load_hf``)."""
    columns = ", ".join(ds.column_names) or "none"
    picked = {}
    for what, kind, named in (("image", hf.Image, HF_IMAGE_COLUMNS),
                              ("label", hf.ClassLabel, HF_LABEL_COLUMNS)):
        typed = [c for c, f in ds.features.items() if isinstance(f, kind)]
        among = [c for c in named if c in (typed or ds.column_names)]
        picked[what] = typed[0] if len(typed) == 1 else (among[0] if among else None)
        if picked[what] is None:
            found = (f"{len(typed)} {kind.__name__} columns ({', '.join(typed)}), none named "
                     if typed else f"no {kind.__name__} column and none named ")
            raise DataError(f"{where} has no {what} column: {found}{' or '.join(named)} "
                            f"(its columns: {columns})")
    feature = ds.features[picked["label"]]
    names = list(feature.names) if isinstance(feature, hf.ClassLabel) else None
    return picked["image"], picked["label"], names


def _hf_images(hf, ds, col: str, where: Path, image_size: int | None) -> np.ndarray:
    """A split's image column as uint8 (N, C, H, W) (``load_hf``)."""
    if not isinstance(ds.features[col], hf.Image):
        return _npz_images(_hf_array(ds, col, where), f"{where}: column {col}", image_size)
    raw = ds.select_columns([col]).cast_column(col, hf.Image(decode=False))
    return _stacked(_hf_image_rows(raw, col, where, image_size))


def _hf_image_rows(raw, col: str, where: Path, image_size: int | None
                   ) -> Iterator[tuple[str, np.ndarray]]:
    i = 0
    for batch in raw.iter(batch_size=256):
        for cell in batch[col]:
            name = f"{where} row {i} (column {col})"
            blob = cell.get("bytes") if isinstance(cell, dict) else None
            if blob is None:
                path = cell.get("path") if isinstance(cell, dict) else None
                raise DataError(f"{name} holds no image bytes" + (
                    f", only the path {path}: icl reads what is saved in the dataset's folder"
                    if path else ""))
            yield name, decode_image(io.BytesIO(blob), image_size, name)
            i += 1


def _hf_array(ds, col: str, where: Path) -> np.ndarray:
    try:
        a = np.asarray(ds.with_format("numpy")[col])
    except ValueError:  # rows of different shapes
        a = np.empty(0, dtype=object)
    if a.dtype == object:
        raise DataError(f"{where}: column {col} holds rows of different shapes or empty "
                        "values: expected one array shape for every row")
    return a


# --------------------------------------------------------------------------- loading


def _root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise DataError(f"dataset {cfg.dataset!r} needs a data folder: set root (--data-root DIR)")
    return Path(cfg.root).expanduser()


def _check(images: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DataError(
            f"{what}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{what}: {len(images)} images but labels of shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{what}: labels must lie in [0, {num_classes}), "
            f"got {int(labels.min())}..{int(labels.max())}"
        )


def load(cfg: DataConfig, cache: DecodedCache | None = None) -> Dataset:
    """Load ``cfg.dataset`` and cut the seeded, class-balanced train / val subsets.

    ``val`` (``cfg.val_size`` images, None when 0) and ``train`` (``cfg.train_size`` images;
    None, or everything left after val, keeps all the rest in source order) are disjoint,
    each class-balanced and fixed by ``cfg.seed``. ``cache``: where a decoded image folder
    or Hugging Face dataset is kept between processes (the workspace's,
    ``store.datacache.DataCache``); None: decoded once per process. Raises DataError on
    any problem.
    """
    name, digest, classes = cfg.dataset, None, ()
    if name == "mnist-embedded":
        parts = load_idx_folder(EMBEDDED_DIR)
    elif name in ("idx", "mnist"):
        parts = load_idx_folder(_root(cfg))
    elif name == "cifar10":
        parts = _cifar10(_root(cfg), cfg.download)
    elif name == "svhn":
        parts = _svhn(_root(cfg), cfg.download)
    elif name == "imagefolder":
        parts, classes, digest = load_image_folder(_root(cfg), cfg.image_size, cache)
    elif name == "npz":
        parts, classes, digest = load_npz(_root(cfg), cfg.image_size)
    elif name == "hf":
        parts, classes, digest = load_hf(_root(cfg), cfg.image_size, cache)
    else:  # fake-cifar10, fake-svhn (DataConfig admits only the names in DATASETS)
        parts = _fake(cfg.seed + (name == "fake-svhn"))
    train_x, train_y, test_x, test_y = parts
    if len(train_y) == 0:
        raise DataError(f"{name}: the training set is empty")
    num_classes = int(train_y.max()) + 1
    _check(train_x, train_y, num_classes, f"{name} training set")
    absent = sorted(set(range(num_classes)) - set(torch.unique(train_y).tolist()))
    if absent or num_classes < 2:
        raise DataError(
            f"{name}: training labels must be the classes 0..K-1 (K >= 2), each present; "
            f"got K = {num_classes}" + (f", with no image of class {absent[:5]}" if absent else "")
        )
    _check(test_x, test_y, num_classes, f"{name} test set")

    wanted = cfg.val_size + (cfg.train_size or 0)
    if wanted > len(train_y):
        raise DataError(
            f"{name}: asked for {wanted} training + validation images, only {len(train_y)} exist"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    val_idx = balanced_subset(train_y, cfg.val_size, g)
    rest = torch.ones(len(train_y), dtype=torch.bool)
    rest[val_idx] = False
    rest_idx = rest.nonzero().squeeze(1)
    if len(rest_idx) == 0:
        raise DataError(f"{name}: --val-size {cfg.val_size} leaves no training images (the "
                        f"training set holds {len(train_y)})")
    if cfg.train_size is not None and cfg.train_size < len(rest_idx):
        rest_idx = rest_idx[balanced_subset(train_y[rest_idx], cfg.train_size, g)]
    train = Split(train_x[rest_idx], train_y[rest_idx])
    val = Split(train_x[val_idx], train_y[val_idx]) if cfg.val_size else None
    test = Split(test_x, test_y)
    fingerprint = (data_fingerprint(name, rest_idx, val_idx, train, val, test) if digest is None
                   else source_fingerprint(name, digest, cfg.image_size, rest_idx, val_idx))
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        shape=tuple(train_x.shape[1:]),
        fingerprint=fingerprint,
        classes=tuple(classes),
    )


def data_fingerprint(name: str, train_idx: torch.Tensor, val_idx: torch.Tensor,
                     train: Split, val: Split | None, test: Split) -> str:
    """sha256 (hex) of what an experiment learns and is judged on: the dataset's name, the
    indices of the chosen training and validation images in the source training set, and
    the bytes of those images, their labels and the test set. Two experiments with the
    same fingerprint saw the same images; a changed file under an experiment changes it."""
    import hashlib

    h = hashlib.sha256(f"icl-data-v1:{name}".encode())
    parts = [train_idx, val_idx, train.images, train.labels, test.images, test.labels]
    if val is not None:
        parts += [val.images, val.labels]
    for t in parts:
        a = t.contiguous().numpy()
        h.update(f"|{a.dtype}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def source_fingerprint(name: str, digest: str, image_size: int | None,
                       train_idx: torch.Tensor, val_idx: torch.Tensor) -> str:
    """sha256 (hex) of a user's dataset as an experiment uses it: the sha256 of its files'
    bytes and names (``digest``: not of the decoded pixels, so another Pillow or numpy
    does not change it), the size images are resized to, and the indices of the chosen
    training and validation images. Like ``data_fingerprint``, a changed file changes it."""
    h = hashlib.sha256(f"icl-data-v1:{name}:{digest}:{image_size}".encode())
    for t in (train_idx, val_idx):
        a = t.contiguous().numpy()
        h.update(f"|{a.dtype}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def balanced_subset(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` samples whose per-class counts differ by at most 1, in sorted order.

    Classes are the labels present. The classes that get one extra sample and the samples of
    each class are drawn with ``generator`` (CPU), so the result is fixed by its seed.

    Shape: labels (N,) -> indices int64 (n,), ascending.
    Raises DataError if ``n`` is negative or a class has too few samples.
    """
    if n < 0:
        raise DataError(f"cannot draw a subset of {n} samples")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    classes = torch.unique(labels)
    base, extra = divmod(n, len(classes))
    counts = torch.full((len(classes),), base, dtype=torch.long)
    counts[torch.randperm(len(classes), generator=generator)[:extra]] += 1
    chosen = []
    for k, count in zip(classes.tolist(), counts.tolist(), strict=True):
        idx = (labels == k).nonzero().squeeze(1)
        if len(idx) < count:
            raise DataError(
                f"class {k} has {len(idx)} samples, {count} needed for a balanced subset of {n}"
            )
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:count]])
    return torch.sort(torch.cat(chosen)).values


# --------------------------------------------------------------------------- tensors


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [-1, 1]: ``x / 127.5 - 1``."""
    return images.to(torch.float32) / 127.5 - 1.0


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The paper's CIFAR augmentation: zero-pad by ``pad``, random crop back to H x W, random
    horizontal flip (p = 0.5). Vectorised; one crop offset and flip per sample.

    Pads with 0.0 in input space (mid-grey pixel 127.5), the usual choice for normalised data.
    Draws (dy, dx, flip) from ``generator``, so equal generators give equal output.

    Shape: x (B, C, H, W) float -> (B, C, H, W).
    """
    B, C, H, W = x.shape
    dev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(B, generator=generator, device=dev) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    rows = dy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
