"""Datasets: the embedded MNIST subset, IDX folders, CIFAR-10 and SVHN through torchvision.

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
import importlib.util
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

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


def load(cfg: DataConfig) -> Dataset:
    """Load ``cfg.dataset`` and cut the seeded, class-balanced train / val subsets.

    ``val`` (``cfg.val_size`` images, None when 0) and ``train`` (``cfg.train_size`` images;
    None, or everything left after val, keeps all the rest in source order) are disjoint,
    each class-balanced and fixed by ``cfg.seed``. Raises DataError on any problem.
    """
    name = cfg.dataset
    if name == "mnist-embedded":
        parts = load_idx_folder(EMBEDDED_DIR)
    elif name in ("idx", "mnist"):
        parts = load_idx_folder(_root(cfg))
    elif name == "cifar10":
        parts = _cifar10(_root(cfg), cfg.download)
    elif name == "svhn":
        parts = _svhn(_root(cfg), cfg.download)
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
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        shape=tuple(train_x.shape[1:]),
        fingerprint=data_fingerprint(name, rest_idx, val_idx, train, val, test),
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
