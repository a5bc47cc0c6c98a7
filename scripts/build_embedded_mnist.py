"""Build the embedded default dataset: a class-balanced subset of real MNIST.

Reads the four torchvision-named IDX ``.gz`` files from ``--source`` and writes the same four
names into ``icl_cli/embedded/``: 600 images per class for training (6,000) and 200 per class
for testing (2,000). If the four files together exceed 3 MB, the per-class training count is
lowered in steps of 50 until they fit.

The draw is fixed (numpy ``default_rng(0)``: one permutation per class, first ``n`` kept, then
sorted back into the source order) and gzip is written with ``mtime=0`` and no file name, so
running the script twice gives byte-identical files.

Usage (from the repository root):
    python scripts/build_embedded_mnist.py [--source ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "icl_cli" / "embedded"
NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_BYTES = 3_000_000
SEED = 0


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a uint8 IDX ``.gz`` file into an array of the header's shape."""
    data = gzip.decompress(path.read_bytes())
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise SystemExit(f"{path}: body has {len(body)} bytes, header says {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def idx_gz_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as a gzip'd IDX file, reproducibly (mtime=0, no file name)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return buf.getvalue()


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each label 0..9, drawn with ``seed``, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        if len(idx) < per_class:
            raise SystemExit(f"class {k} has {len(idx)} images, {per_class} needed")
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(chosen))


def encode(source: Path, split: str, per_class: int) -> dict[str, bytes]:
    image_name, label_name = NAMES[split]
    images = read_idx_gz(source / f"{image_name}.gz")
    labels = read_idx_gz(source / f"{label_name}.gz")
    keep = balanced_indices(labels, per_class, SEED)
    return {
        f"{image_name}.gz": idx_gz_bytes(images[keep]),
        f"{label_name}.gz": idx_gz_bytes(labels[keep]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()

    test_files = encode(args.source, "test", args.test_per_class)
    per_class = args.train_per_class
    while True:
        files = {**encode(args.source, "train", per_class), **test_files}
        total = sum(len(b) for b in files.values())
        if total <= MAX_BYTES or per_class <= 50:
            break
        per_class -= 50

    OUT.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (OUT / name).write_bytes(blob)
        print(f"{OUT / name}: {len(blob):,} bytes")
    print(f"train {per_class * 10} + test {args.test_per_class * 10} images, {total:,} bytes")


if __name__ == "__main__":
    main()
