"""Shard files: one HDF5 file of pseudo-negatives per (round, version).

Path: ``<ws>/experiments/<name>/shards/round-0007.v1.h5`` (round 7, version 1). A shard
is written once and never changed; synthesising the round again makes ``v2``.

Datasets (N samples, chunked along N, gzip level 4 with the shuffle filter):

==========  =======  ============  ==================================================
name        dtype    shape         meaning
==========  =======  ============  ==================================================
samples     float32  (N, C, H, W)  the synthesised inputs, in the model's input scale
target      int64    (N,)          class k whose logit f_k was pushed up
steps       int32    (N,)          gradient steps used (0 for ICL-noise draws)
logit       float32  (N,)          final f_k(x)
passed      bool     (N,)          True if the sample met the stop rule before max_steps
==========  =======  ============  ==================================================

Attributes: ``round`` (int), ``version`` (int), ``seed`` (int), ``sampler_config``
(JSON string), ``source_checkpoint`` (sha256 hex of the checkpoint sampled from),
``tool_version``, ``format_version`` (= 1), ``created_at`` (ISO 8601, UTC) and
``experiment`` (informative; the catalog path is what identifies the experiment).

Parts (``icl synthesize --round t --part i/N``): ``round-0007.v1.part-2-of-3.h5`` beside
the shards, the same datasets for the round's rows ``rows`` (an int64 array of
[start, stop) pairs, one per block, in the order the datasets hold them), and the same
attributes plus ``part_index``, ``part_count``, ``rows``, ``round_count`` (the samples of
the whole round), ``draw_seconds`` and ``device``. A part of other settings (seed, sampler,
source checkpoint, count) than the part holding that name is
``round-0007.v1.part-2-of-3.<key>.h5`` (``part_key``): a part never replaces one of another
set. A part is not a shard: the catalog has no row for it (the step log records it), and
the N parts of a round are joined into its shard, then removed.

Reading one with plain h5py::

    import h5py, json
    with h5py.File("experiments/icl/shards/round-0001.v1.h5", "r") as f:
        x, k = f["samples"][:], f["target"][:]          # (N, C, H, W), (N,)
        cfg = json.loads(f.attrs["sampler_config"])
        print(f.attrs["round"], x.shape, f["passed"][:].mean())
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, StoreError

FORMAT_VERSION = 1
if TYPE_CHECKING:
    import numpy as np

# numpy dtype names; numpy itself is imported lazily (keeps `icl --help` fast).
DATASETS: dict[str, str] = {
    "samples": "float32",
    "target": "int64",
    "steps": "int32",
    "logit": "float32",
    "passed": "bool",
}
REQUIRED_ATTRS = (
    "round",
    "version",
    "seed",
    "sampler_config",
    "source_checkpoint",
    "tool_version",
    "format_version",
    "created_at",
)
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: good gzip ratio, cheap partial reads
PART_ATTRS = ("part_index", "part_count", "round_count")
"""A part file's integer attributes; ``rows`` (its blocks' [start, stop) pairs) is the other."""
PART_FILE = re.compile(r"^round-(\d{4,})\.v(\d+)\.part-(\d+)-of-(\d+)(?:\.([0-9a-f]{16}))?\.h5$")
"""A part file's name: round, version, part i, of N, and, for a part whose plain name a
part of other settings holds, the key of its settings (``icl verify`` tells parts by it)."""


def shard_name(round: int, version: int) -> str:
    """``round-0007.v1.h5``."""
    return f"round-{round:04d}.v{version}.h5"


def part_name(round: int, version: int, index: int, parts: int, key: str | None = None
              ) -> str:
    """``round-0007.v1.part-2-of-3.h5``: part 2 of 3 of round 7's shard v1; with ``key``
    (:func:`part_key`), ``round-0007.v1.part-2-of-3.<key>.h5``: the same part of a set drawn
    with other settings, whose plain name a part of another set holds."""
    tail = "" if key is None else f".{key}"
    return f"round-{round:04d}.v{version}.part-{index}-of-{parts}{tail}.h5"


def part_key(attrs: dict[str, Any]) -> str:
    """What a part's set is drawn with, as 16 hex digits: its seed, sampler settings, source
    checkpoint and the round's sample count (from the attributes a part is written with,
    or those ``read_meta`` reads back: the same key)."""
    from .hashing import config_hash

    return config_hash({"seed": attrs.get("seed"),
                        "sampler_config": attrs.get("sampler_config") or {},
                        "source_checkpoint": attrs.get("source_checkpoint") or None,
                        "round_count": attrs.get("round_count")})


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("icl-toolkit")
    except PackageNotFoundError:
        return "0+unknown"


def prepare_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check names and shapes and cast to the file dtypes; raise StoreError if the caller
    passed something a shard cannot hold (a bug, caught before any file is written)."""
    import numpy as np

    missing = sorted(set(DATASETS) - set(arrays))
    extra = sorted(set(arrays) - set(DATASETS))
    if missing or extra:
        raise StoreError(
            f"shard arrays must be {sorted(DATASETS)}; missing {missing}, extra {extra}"
        )
    out = {k: np.ascontiguousarray(np.asarray(arrays[k]), dtype=dt) for k, dt in DATASETS.items()}
    n = out["samples"].shape[0] if out["samples"].ndim == 4 else None
    if n is None:
        raise StoreError(f"shard samples must be 4-D (N, C, H, W), got {out['samples'].shape}")
    for k in DATASETS:
        if k != "samples" and out[k].shape != (n,):
            raise StoreError(f"shard array {k!r} must have shape ({n},), got {out[k].shape}")
    if not np.isfinite(out["samples"]).all():
        raise StoreError("shard samples hold NaN or infinite values (the sampler diverged: "
                         "lower --lr or --langevin-std, or pass --clamp)")
    return out


def write_file(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write a shard to ``path`` (a temporary name; see ``workspace.atomic_write``).

    ``arrays`` as returned by :func:`prepare_arrays`; ``attrs`` holds round, version, seed,
    sampler_config (dict), source_checkpoint and experiment, and for a part file the
    integers of ``PART_ATTRS`` and its ``rows``; the rest is filled in here.

    The HDF5 file is built in memory and written in one go: HDF5 running out of disk
    space part-way through its own writes crashed the process (exit 139), where a plain
    write fails with an OSError (ENOSPC) that the command reports in one line.
    """
    import io

    import h5py
    import numpy as np

    n = arrays["samples"].shape[0]
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, data in arrays.items():
            if n == 0:  # HDF5 cannot chunk an empty extent
                f.create_dataset(name, data=data)
                continue
            row_bytes = max(1, data[0].nbytes)
            rows = int(max(1, min(n, CHUNK_BYTES // row_bytes)))
            f.create_dataset(
                name,
                data=data,
                chunks=(rows, *data.shape[1:]),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )
        f.attrs["round"] = int(attrs["round"])
        f.attrs["version"] = int(attrs["version"])
        f.attrs["seed"] = int(attrs.get("seed") if attrs.get("seed") is not None else -1)
        f.attrs["sampler_config"] = json.dumps(attrs.get("sampler_config") or {}, sort_keys=True)
        f.attrs["source_checkpoint"] = str(attrs.get("source_checkpoint") or "")
        f.attrs["experiment"] = str(attrs.get("experiment") or "")
        f.attrs["tool_version"] = tool_version()
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created_at"] = datetime.now(timezone.utc).isoformat()
        for name in PART_ATTRS:
            if name in attrs:
                f.attrs[name] = int(attrs[name])
        if "rows" in attrs:
            f.attrs["rows"] = np.asarray(attrs["rows"], dtype=np.int64).reshape(-1, 2)
        if "draw_seconds" in attrs:  # a part's own note of how it was drawn
            f.attrs["draw_seconds"] = float(attrs["draw_seconds"])
            f.attrs["device"] = str(attrs.get("device", ""))
    Path(path).write_bytes(buf.getbuffer())


def read_file(path: Path, round: int, version: int, rel: str, fix: str) -> dict[str, np.ndarray]:
    """Open a shard whose hash was already checked, validate it and return its arrays.

    ``rel`` names the file in messages, ``fix`` is the command suggested on failure.
    Raises IntegrityError for a file h5py cannot open, a missing or mistyped dataset,
    inconsistent lengths, or round/version attributes that disagree with the catalog.
    """
    import h5py
    import numpy as np

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"shard {rel} {why}: {fix}")

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise bad(f"is not a readable HDF5 file ({exc})") from None
    with f:
        for name, dtype in DATASETS.items():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise bad(f"has no dataset {name!r}")
            if f[name].dtype != dtype:
                raise bad(f"dataset {name!r} is {f[name].dtype}, expected {dtype}")
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise bad(f"lacks attributes {missing}")
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise IntegrityError(
                f"shard {rel} has format {int(f.attrs['format_version'])}, newer than this "
                f"icl reads ({FORMAT_VERSION}); upgrade icl"
            )
        if (int(f.attrs["round"]), int(f.attrs["version"])) != (round, version):
            raise bad(
                f"holds round {int(f.attrs['round'])} v{int(f.attrs['version'])}, "
                f"but the catalog says round {round} v{version}"
            )
        try:
            out = {name: f[name][()] for name in DATASETS}
        except (OSError, ValueError) as exc:
            raise bad(f"could not be read ({exc})") from None
    if out["samples"].ndim != 4:
        raise bad(f"has {out['samples'].ndim}-D samples, expected (N, C, H, W)")
    n = out["samples"].shape[0]
    for name, arr in out.items():
        if name != "samples" and arr.shape != (n,):
            raise bad(f"dataset {name!r} has shape {arr.shape}, expected ({n},)")
    if not np.isfinite(out["samples"]).all():
        raise bad("holds NaN or infinite samples")
    if n and int(out["target"].min()) < 0:
        raise bad("holds negative target classes")
    return out


def read_meta(path: Path, rel: str) -> dict[str, Any]:
    """A shard's own record of itself, without reading its arrays: round, version, seed
    (None if unset), sampler_config (dict), source_checkpoint (None if unset), count,
    created_at (ISO text), experiment, and a part file's ``PART_ATTRS`` and ``rows`` (a
    list of [start, stop]). IntegrityError for a file that is not a shard."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
            if missing or "samples" not in f:
                raise IntegrityError(f"shard {rel} lacks attributes {missing or ['samples']}")
            a = f.attrs
            seed = int(a["seed"])
            return {
                "round": int(a["round"]), "version": int(a["version"]),
                "seed": None if seed == -1 else seed,
                "sampler_config": json.loads(a["sampler_config"]),
                "source_checkpoint": str(a["source_checkpoint"]) or None,
                "count": int(f["samples"].shape[0]),
                "created_at": str(a["created_at"]), "experiment": str(a.get("experiment", "")),
                **{k: int(a[k]) for k in PART_ATTRS if k in a},
                **({"rows": np.asarray(a["rows"]).reshape(-1, 2).tolist()} if "rows" in a
                   else {}),
                **({"draw_seconds": float(a["draw_seconds"]), "device": str(a["device"])}
                   if "draw_seconds" in a else {}),
            }
    except (OSError, ValueError, KeyError) as exc:
        raise IntegrityError(f"shard {rel} is not a readable icl shard ({exc})") from None
