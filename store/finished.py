"""The finished-steps part of a store (schema 7): what a finished step printed, so that the
same command run again answers from the catalog, without torch, h5py or MLflow.

A step that did its work records one row per (experiment, command, slot): its ``--json``
``document``, the ``settings`` it depends on (its options and the sha256 of its inputs, as
the catalog holds them) and the ``files`` it read and wrote, each with its sha256 (where
the catalog keeps one), size and mtime taken when the row is written. The ``slot`` is what
the step's catalog records are keyed by (a round; an attack's other model, eps and
method...): a later run of the same slot with other settings replaces the row, as it
replaces those records.

The cheap check of a rerun (``unchanged``) trusts a recorded sha256 while the file's size
and mtime are those recorded: a file rewritten or touched since sends the command back to
its normal path, which hashes what it reads. A file whose bytes were changed with its size
kept and its mtime set back is not seen here, nor one rewritten at the same size within the
file system's timestamp granularity of its last write (as for make or rsync's quick check);
``icl verify`` hashes every file.

Example:
    >>> st.record_finished("icl", "evaluate", {"round": 3}, {"bins": 15},   # doctest: +SKIP
    ...                    [stamp(st.root, ckpt.path, ckpt.sha256)], [{"error": 0.1}])
    >>> st.finished("icl", "evaluate", {"round": 3}).document
    [{'error': 0.1}]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .schema import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .catalog import Catalog


@dataclass(frozen=True)
class Finished:
    """A finished step's row: its settings, files (stamps) and printed document."""

    experiment: str
    command: str
    slot: dict[str, Any]
    settings: dict[str, Any]
    files: list[dict[str, Any]]
    document: Any


def slot_key(slot: dict[str, Any]) -> str:
    """The canonical text of a slot (sorted keys, no spaces): the catalog's key.

    Example:
        >>> slot_key({"round": 3, "eps": 0.125})
        '{"eps":0.125,"round":3}'
    """
    return json.dumps(slot, sort_keys=True, separators=(",", ":"))


def stamp(root: Path, path: Path | str, sha256: str | None = None) -> dict[str, Any]:
    """What the cheap check compares of a file: its path (relative to the workspace
    ``root`` when inside it, else absolute), its sha256 (None where not hashed), size
    and mtime in nanoseconds. A missing file stamps as size -1 (it must stay missing)."""
    path = Path(path)
    full = path if path.is_absolute() else Path(root) / path
    try:
        st = os.stat(full)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, 0
    named = os.path.normpath(os.path.abspath(full))
    top = str(root)
    shown = Path(named[len(top) + 1:]).as_posix() if named.startswith(top + os.sep) else named
    return {"path": shown, "sha256": sha256, "size": size, "mtime_ns": mtime}


def _full(root: Path, path: str) -> Path:
    return Path(path) if os.path.isabs(path) else Path(root) / path


def unchanged(root: Path, files: list[dict[str, Any]]) -> bool:
    """True when every stamped file has the size and mtime it was recorded with (a stamp
    of a missing file: still missing)."""
    for f in files:
        now = stamp(root, f["path"])
        if (now["size"], now["mtime_ns"]) != (f["size"], f["mtime_ns"]):
            return False
    return True


class FinishedSteps:
    """Finished steps' documents in ``catalog`` (written through the ORM, read through
    ``store.reader``'s plain SQL)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def record(self, experiment: str, command: str, slot: dict[str, Any],
               settings: dict[str, Any], files: list[dict[str, Any]], document: Any) -> None:
        """Record (replacing the slot's earlier row) what ``command`` printed for ``slot``
        of ``experiment``, made with ``settings`` from ``files`` (``stamp``)."""
        from sqlalchemy import select

        from .orm import FinishedStep

        name = self.catalog.experiment(experiment).name
        key = slot_key(slot)

        def write(s: Session) -> None:
            exp_id = self.catalog.row(s, name).id
            row = s.scalar(select(FinishedStep).filter_by(experiment_id=exp_id,
                                                          command=command, slot=key))
            if row is None:
                row = FinishedStep(experiment_id=exp_id, command=command, slot=key)
                s.add(row)
            row.settings, row.files, row.document = dict(settings), list(files), document
            row.created_at = utcnow()

        self.catalog.write(write)

    def forget(self, experiment: str, command: str, slot: dict[str, Any]) -> None:
        """Drop the slot's row (its result is no longer what the catalog holds)."""
        from sqlalchemy import delete

        from .orm import FinishedStep

        name = self.catalog.experiment(experiment).name

        def write(s: Session) -> None:
            exp_id = self.catalog.row(s, name).id
            s.execute(delete(FinishedStep).filter_by(experiment_id=exp_id, command=command,
                                                     slot=slot_key(slot)))

        self.catalog.write(write)

    def restamp(self, experiment: str, command: str, slot: dict[str, Any]) -> bool:
        """After the step's normal path found its work done: stamp again each file of the
        slot's row whose size or mtime changed but whose bytes still hash to the recorded
        sha256 (a file touched, or copied back), so the next rerun answers at once again.
        A changed file without a recorded sha256, or with other bytes, keeps its old stamp
        (the row stays unanswerable). True when the row is usable now."""
        from .workspace import sha256_file

        found = self.find(experiment, command, slot)
        if found is None or unchanged(self.catalog.root, found.files):
            return found is not None
        files = []
        for f in found.files:
            now = stamp(self.catalog.root, f["path"], f["sha256"])
            moved = (now["size"], now["mtime_ns"]) != (f["size"], f["mtime_ns"])
            if moved and (f["sha256"] is None or now["size"] < 0 or sha256_file(
                    _full(self.catalog.root, f["path"])) != f["sha256"]):
                return False
            files.append(now)
        self.record(experiment, command, slot, found.settings, files, found.document)
        return True

    def find(self, experiment: str, command: str, slot: dict[str, Any]) -> Finished | None:
        """The row of ``slot``, or None (never recorded, or replaced by another slot's)."""
        found = self.catalog.reader.finished(experiment, command, slot_key(slot))
        if found is None:
            return None
        settings, files, document = found
        return Finished(experiment, command, dict(slot), settings, files, document)
