"""Per-experiment advisory locks (``fcntl.flock`` on ``.icl/locks/<name>.lock`` and on the
experiment's own folder).

The holder writes its pid, host and command into the lock file, so a second process can
say who is busy. Locks are re-entrant within one process (``step()`` inside ``lock()``
works) and released when the holder exits however it exits (the kernel drops flocks).
icl never deletes the lock file; if a user does, a second process would lock a new inode,
so the holder also locks the experiment's folder (``anchor``), which nobody deletes
without deleting the experiment: the second process then still finds it busy.

With a PostgreSQL catalog the workspace may sit on storage shared by several machines,
where file locks do not hold across NFS clients: the holder then also takes a PostgreSQL
advisory lock keyed by the experiment's name, on a connection of its own kept for as long
as it holds the lock (the server drops it if the holder dies). Its write transactions
take one more advisory lock, :func:`catalog_write_lock`: one catalog writer at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import BusyError, catalog_errors
from .workspace import EXPERIMENTS_DIR, ICL_DIR, LOCKS_DIR, contained, validate_name

_HELD: dict[str, list] = {}  # lock path -> [open file, depth]
_GUARD = threading.Lock()
_ADVISORY: dict[tuple[str, int], list] = {}  # (catalog url, key) -> [connection, depth]
os.register_at_fork(after_in_child=_HELD.clear)  # a child must lock for itself
os.register_at_fork(after_in_child=_ADVISORY.clear)


def default_command() -> str:
    """What this process is doing, for other processes' messages: ``synthesize --round 3``."""
    return shlex.join(sys.argv[1:]) or Path(sys.argv[0]).name


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _busy(experiment: str, path: Path) -> BusyError:
    info = _holder(path)
    who = "another icl process"
    if info.get("pid"):
        host = info.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        who += f" (pid {info['pid']}{where})"
    what = f" is running `{info['command']}`" if info.get("command") else " holds it"
    return BusyError(
        f"experiment '{experiment}' is busy: {who}{what}; "
        "wait for it to finish (or stop it) and run again"
    )


def _held_again(table: dict, key: Any) -> list | None:
    """The ``[handle, depth]`` of a lock this process already holds, its depth counted up
    (the lock is re-entrant); None if it does not hold it."""
    with _GUARD:
        held = table.get(key)
        if held is not None:
            held[1] += 1
        return held


@contextmanager
def _counted(held: list) -> Iterator[None]:
    try:
        yield
    finally:
        with _GUARD:
            held[1] -= 1


@contextmanager
def experiment_lock(
    path: Path, experiment: str, wait: bool = False, command: str | None = None,
    anchor: Path | None = None,
) -> Iterator[None]:
    """Hold the exclusive lock at ``path`` (and on the folder ``anchor``, when it exists)
    for the ``with`` body.

    ``wait=False`` raises BusyError at once if another process holds it; ``wait=True``
    blocks until it is free (Ctrl-C still interrupts).
    """
    key = str(path)
    held = _held_again(_HELD, key)
    if held is not None:
        with _counted(held):
            yield
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    f: IO[str] = open(path, "a+")  # "a+" : create without truncating the holder's note
    folder = None
    try:
        mode = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f.fileno(), mode)
            if anchor is not None and anchor.is_dir() and not anchor.is_symlink():
                folder = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(folder, mode)
        except BlockingIOError:
            raise _busy(experiment, path) from None
        note = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        if note["command"] is None:
            note["command"] = default_command()
        f.seek(0)
        f.truncate()
        f.write(json.dumps(note))
        f.flush()
        with _GUARD:
            _HELD[key] = [f, 1]
        try:
            yield
        finally:
            with _GUARD:
                _HELD.pop(key, None)
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        if folder is not None:
            os.close(folder)  # closing drops its flock
        f.close()


def is_locked_elsewhere(path: Path) -> bool:
    """True if another process holds the lock at ``path`` right now."""
    if str(path) in _HELD:
        return False
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False



def advisory_key(experiment: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of an experiment."""
    digest = hashlib.sha256(f"icl:experiment:{experiment}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(engine: Any, experiment: str, wait: bool = False) -> Iterator[None]:
    """Hold ``experiment``'s advisory lock on the PostgreSQL server of ``engine`` for the
    ``with`` body (re-entrant within a process); BusyError at once if another session
    holds it and not ``wait``."""
    slot = (str(engine.url), advisory_key(experiment))
    held = _held_again(_ADVISORY, slot)
    if held is not None:
        with _counted(held):
            yield
        return
    with catalog_errors():
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        with catalog_errors():
            if wait:
                conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (slot[1],))
            elif not conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)",
                                          (slot[1],)).scalar():
                raise BusyError(
                    f"experiment '{experiment}' is busy: an icl process on another machine "
                    f"holds its lock in the catalog {engine.url.host or engine.url.database}; "
                    "wait for it to finish (or stop it) and run again")
        with _GUARD:
            _ADVISORY[slot] = [conn, 1]
        try:
            yield
        finally:
            with _GUARD:
                _ADVISORY.pop(slot, None)
            with catalog_errors():
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (slot[1],))
    finally:
        conn.close()


CATALOG_WRITE_KEY = int.from_bytes(
    hashlib.sha256(b"icl:catalog-write").digest()[:8], "big", signed=True)
"""The advisory-lock key that serializes a PostgreSQL catalog's write transactions."""


def catalog_write_lock(session: Any) -> None:
    """On a PostgreSQL catalog, make the write transaction of ``session`` (an ORM Session
    or a Connection) the only one until it ends (``pg_advisory_xact_lock``, released at
    commit or rollback): one writer at a time, as SQLite's ``BEGIN IMMEDIATE`` gives.
    Without it two transactions under READ COMMITTED both find no row for a key and both
    insert it: a "replace any earlier one" write (``record_evaluation``,
    ``record_metrics``...) of two processes at once fails with a unique-constraint
    violation. Nothing to do on SQLite. Called first in every write transaction
    (``store.orm.write_session``) and schema change (``store.orm.migrate``)."""
    bind = session.get_bind() if hasattr(session, "get_bind") else session
    if bind.dialect.name != "postgresql":
        return
    from sqlalchemy import text

    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CATALOG_WRITE_KEY})


def advisory_held_elsewhere(engine: Any, experiment: str) -> bool:
    """True if another session holds ``experiment``'s advisory lock right now."""
    slot = (str(engine.url), advisory_key(experiment))
    if slot in _ADVISORY:
        return False
    with catalog_errors(), engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (slot[1],)).scalar():
            return True
        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (slot[1],))
        return False


class Locks:
    """The lock part of a store: one lock per experiment of the workspace at ``root``.

    Example:
        >>> with Locks(root).lock("icl"):          # doctest: +SKIP
        ...     ...                                 # no other process writes 'icl' meanwhile
    """

    def __init__(self, root: Path, engine: Any = None) -> None:
        """``engine``: the catalog's; a PostgreSQL one adds its advisory locks."""
        self.root = root
        self.server = engine if getattr(engine, "dialect", None) is not None \
            and engine.dialect.name == "postgresql" else None

    def path(self, experiment: str) -> Path:
        """``.icl/locks/<experiment>.lock``; OutsideWorkspace where a link on the way leads
        out of the workspace (the lock file is written: never through such a link)."""
        return contained(self.root,
                         self.root / ICL_DIR / LOCKS_DIR / f"{validate_name(experiment)}.lock")

    @contextmanager
    def lock(self, experiment: str, wait: bool = False, command: str | None = None):
        """Exclusive per-experiment lock; BusyError at once if held elsewhere and not
        ``wait``. ``command`` is shown to whoever finds it busy (default: this argv)."""
        anchor = self.root / EXPERIMENTS_DIR / validate_name(experiment)
        with experiment_lock(self.path(experiment), experiment, wait, command, anchor):
            if self.server is None:
                yield
                return
            with advisory_lock(self.server, experiment, wait):
                yield

    def held_elsewhere(self, experiment: str) -> bool:
        """True if another process holds ``experiment``'s lock right now (on any machine,
        with a PostgreSQL catalog)."""
        if is_locked_elsewhere(self.path(experiment)):
            return True
        return self.server is not None and advisory_held_elsewhere(self.server, experiment)
