"""Reference networks that a workspace trains once and then reuses (``icl quality``'s MLP).

``<ws>/.icl/references/<key>.pt`` holds plain data, ``{"model": state_dict, "meta": {...}}``,
loaded with ``weights_only=True``. ``<key>`` is the hash of everything the net is a function
of (its name and width, the data fingerprint, epochs, seed), so the paired experiments of
one subset share one net. The file is written atomically, then its sha256 is recorded in
the catalog (``reference_nets``, schema 5): a net whose file does not match that hash (a
tampered or foreign file) is refused, and one the catalog has no row for (a write that
never finished, a file from elsewhere, or a hash file beside it as icl before schema 5
wrote: no longer read) is not trusted: it is trained again. A lost catalog loses the rows,
and the nets are trained again.

Example:
    >>> sha = save_reference(store, key, {"model": weights, "meta": spec})  # doctest: +SKIP
    >>> state, same = load_reference(store, key)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError
from .hashing import config_hash
from .workspace import ICL_DIR, atomic_write, contained, sha256_file

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


REFERENCES_DIR = "references"


def reference_key(spec: dict[str, Any]) -> str:
    """The cache key of a reference net: the hash of what it is a function of."""
    return config_hash(spec)


def reference_path(root: Path, key: str) -> Path:
    """The net's file, refused (OutsideWorkspace) behind a link that leaves the workspace."""
    return contained(root, Path(root) / ICL_DIR / REFERENCES_DIR / f"{key}.pt")


_path = reference_path


def load_reference(store: Any, key: str) -> tuple[dict[str, Any], str] | None:
    """``(state, sha256)`` of the cached net of ``store`` (a Store), or None when there is
    none the catalog vouches for (no row, or its file is gone). IntegrityError when the
    file does not match the sha256 the catalog recorded."""
    import torch

    path = _path(store.root, key)
    recorded = store.catalog.reader.reference(key)
    if recorded is None or not path.is_file():
        return None
    want = recorded[1]
    if sha256_file(path) != want:
        rel = path.relative_to(store.root)
        raise IntegrityError(f"reference net {rel} does not match its recorded sha256: "
                             f"delete {rel} and run the command again (it is retrained)")
    return torch.load(path, map_location="cpu", weights_only=True), want


def save_reference(store: Any, key: str, state: dict[str, Any]) -> str:
    """Write the net (atomically), then record its sha256 in the catalog; returns it."""
    import torch
    from sqlalchemy import select

    from .orm import ReferenceNet

    path = _path(store.root, key)
    atomic_write(path, lambda tmp: torch.save(state, tmp), root=store.root)
    sha = sha256_file(path)
    rel = path.relative_to(store.root).as_posix()

    def record(s: Session) -> None:
        row = s.scalar(select(ReferenceNet).where(ReferenceNet.key == key))
        if row is None:
            s.add(ReferenceNet(key=key, path=rel, sha256=sha))
        else:
            row.path, row.sha256 = rel, sha

    store.catalog.write(record)
    return sha
