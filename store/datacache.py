"""Decoded datasets kept in the workspace, so that a folder of images is decoded once.

``<ws>/.icl/data/<key>.<sha256>.npz`` holds plain arrays (``np.savez``, read with
``allow_pickle=False``). ``<key>`` is what the arrays are a function of (the data's own
fingerprint over its files' bytes, the image size, the decoder's version: see
``icl_cli.data``), ``<sha256>`` the file's own hash, recorded in its name as it is
written (temporary file, fsync, rename). A file whose bytes do not match its name (a
damaged disk, a hand edit) is removed and counts as absent: the data is decoded again and
the file written anew. Nothing here is precious: deleting ``.icl/data`` costs one decode.

Example:
    >>> cache = DataCache(store.root)                 # doctest: +SKIP
    >>> cache.put("imagefolder-3f2a...", {"train_x": x, ...})
    >>> cache.get("imagefolder-3f2a...")["train_x"].shape
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from .errors import StoreError
from .workspace import ICL_DIR, TMP_MARK, atomic_write, contained, pid_alive, sha256_file

DATA_DIR = "data"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_TMP = re.compile(rf"^.+{re.escape(TMP_MARK)}(\d+)-[0-9a-f]{{8}}$")


class DataCache:
    """The workspace's decoded datasets (``.icl/data``); ``get`` and ``put`` by key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folder = self.root / ICL_DIR / DATA_DIR

    def _files(self, key: str) -> list[Path]:
        if not _KEY.fullmatch(key):
            raise StoreError(f"invalid data cache key {key!r}")
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{key}.*.npz")
                      if re.fullmatch(rf"{re.escape(key)}\.[0-9a-f]{{64}}\.npz", p.name))

    def has(self, key: str) -> bool:
        """True if a file for ``key`` exists (its bytes are checked by ``get``)."""
        return bool(self._files(key))

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (never stored, or a damaged file,
        which is then removed). A link leading out of the workspace is refused
        (OutsideWorkspace), as for every file icl reads."""
        for path in self._files(key):
            contained(self.root, path, "a decoded dataset")
            if sha256_file(path) != path.name.split(".")[-2]:
                path.unlink(missing_ok=True)
                continue
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        return None

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Store ``arrays`` under ``key`` (replacing what was there); returns the file."""
        old = self._files(key)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
        path = self.folder / f"{key}.{hashlib.sha256(blob).hexdigest()}.npz"
        self._sweep()
        atomic_write(path, lambda tmp: tmp.write_bytes(blob), root=self.root)
        for p in old:
            if p != path:
                p.unlink(missing_ok=True)
        return path

    def _sweep(self) -> None:
        """Remove the temporaries of writers that died (a killed decode)."""
        if not self.folder.is_dir():
            return
        for tmp in self.folder.glob(f"*{TMP_MARK}*"):
            m = _TMP.match(tmp.name)
            if m and tmp.is_file() and not pid_alive(int(m.group(1))):
                tmp.unlink(missing_ok=True)
