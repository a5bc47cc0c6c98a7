"""Reference networks that a workspace trains once and then reuses (``icl quality``'s MLP).

``<ws>/.icl/references/<key>.pt`` holds plain data, ``{"model": state_dict, "meta": {...}}``,
loaded with ``weights_only=True``. ``<key>`` is the hash of everything the net is a function
of (its name and width, the data fingerprint, epochs, seed), so the paired experiments of
one subset share one net. The file's sha256 is written to ``<key>.sha256`` after the file
itself, both atomically: a net whose file does not match that hash (a tampered or foreign
file) is refused, and one without it (a write that never finished) is not trusted: it is
trained again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .hashing import config_hash
from .workspace import ICL_DIR, atomic_write, contained, sha256_file

REFERENCES_DIR = "references"


def reference_key(spec: dict[str, Any]) -> str:
    """The cache key of a reference net: the hash of what it is a function of."""
    return config_hash(spec)


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    """The net's file and its hash file, refused (OutsideWorkspace) behind a link that leaves
    the workspace."""
    folder = Path(root) / ICL_DIR / REFERENCES_DIR
    return (contained(root, folder / f"{key}.pt"), contained(root, folder / f"{key}.sha256"))


def load_reference(root: Path, key: str) -> tuple[dict[str, Any], str] | None:
    """``(state, sha256)`` of the cached net, or None when there is none (or its write never
    finished). IntegrityError when the file does not match its recorded hash."""
    import torch

    path, digest = _paths(root, key)
    if not (path.is_file() and digest.is_file()):
        return None
    want = digest.read_text().strip()
    if sha256_file(path) != want:
        rel = path.relative_to(root)
        raise IntegrityError(f"reference net {rel} does not match its recorded sha256: "
                             f"delete {rel} and run the command again (it is retrained)")
    return torch.load(path, map_location="cpu", weights_only=True), want


def save_reference(root: Path, key: str, state: dict[str, Any]) -> str:
    """Write the net and then its hash (each atomically); returns the sha256."""
    import torch

    path, digest = _paths(root, key)
    atomic_write(path, lambda tmp: torch.save(state, tmp), root=root)
    sha = sha256_file(path)
    atomic_write(digest, lambda tmp: tmp.write_text(sha + "\n"), root=root)
    return sha
