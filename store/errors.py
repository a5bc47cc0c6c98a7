"""Errors the store raises for a user to read.

Each error's ``str`` is one line: the file or experiment at fault and the command that
fixes it, so the CLI can print it as is and exit non-zero without a traceback.

A leaf: it imports no other store module, so every store module may import it. SQLAlchemy
is imported only inside :func:`catalog_errors`, which runs only around an engine's work, so
the plain-SQL read path (``store.reader`` on a SQLite file) never loads it.

Example:
    >>> str(ExperimentNotFound("no experiment 'x' in /ws; known: a, b"))
    "no experiment 'x' in /ws; known: a, b"
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager


class StoreError(Exception):
    """Base class: a one-line message naming the file and what to run to fix it."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller built it from.
        super().__init__(" ".join(str(message).split()))


class NotAWorkspace(StoreError):
    """No ``.icl/`` catalog in the given folder or any parent."""


class IntegrityError(StoreError):
    """A shard or checkpoint is missing, altered, truncated or not what the catalog says."""


class ExperimentNotFound(StoreError):
    """The named experiment does not exist (the message lists the known names)."""


class BusyError(StoreError):
    """Another process holds the experiment's lock."""


class ConflictError(StoreError):
    """A row already exists with different content (experiment config, checkpoint...)."""


class OutsideWorkspace(IntegrityError):
    """A link inside the workspace (a folder or file where icl keeps its own) leads out of
    it: icl neither writes nor deletes through it, nor reads an artefact through it."""


class CatalogOfAnotherWorkspace(StoreError):
    """The catalog (``ICL_CATALOG_URL``) serves another workspace, or this workspace is a
    copy of the one it serves; a moved workspace is told to run ``icl verify --adopt``."""


class CatalogUnusable(StoreError):
    """The catalog database cannot be used: unreadable, read-only, on a full disk, or its
    server unreachable (the message names the catalog and what to check)."""


class CatalogDamaged(IntegrityError):
    """The catalog database is damaged (not a database, corrupt pages)."""


def catalog_unusable(detail: str, server: bool = False) -> CatalogUnusable:
    """The one-line refusal for a catalog that cannot be used (``detail``: the database's
    own first line, e.g. "attempt to write a readonly database"). ``server``: the catalog
    lives on a database server, which refused or could not be reached (a wrong password, a
    database or user that does not exist...): the hint then names the server, not the
    workspace's files."""
    if server:
        return CatalogUnusable(f"cannot use the catalog: the catalog's database server refused "
                               f"or could not be reached: {detail} (check ICL_CATALOG_URL: the "
                               "server's address, the user and password, the database name)")
    return CatalogUnusable(f"cannot use the workspace catalog: {detail} "
                           "(check the workspace's permissions and free space)")


def catalog_damaged(detail: str) -> CatalogDamaged:
    """The one-line report of a damaged catalog (``detail``: e.g. "file is not a
    database")."""
    return CatalogDamaged(f"the workspace catalog is damaged: {detail}")


def first_line(exc: BaseException) -> str:
    """The first line of a database error (the driver's own, under SQLAlchemy's wrapper)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


@contextmanager
def catalog_errors() -> Iterator[None]:
    """SQLAlchemy's errors as the store's own: CatalogUnusable (unreadable, read-only or
    full disk; busy is retried by ``store.orm.run_write``) or CatalogDamaged. Nothing above
    the store sees an SQLAlchemy exception. (``store.reader`` words ``sqlite3``'s errors
    the same way.)"""
    from sqlalchemy.exc import DatabaseError, OperationalError  # loaded by the engine already

    try:
        yield
    except OperationalError as exc:
        raise catalog_unusable(first_line(exc), from_server(exc)) from exc
    except DatabaseError as exc:
        raise catalog_damaged(first_line(exc)) from exc


def from_server(exc: BaseException) -> bool:
    """True if a database error came from a server's driver (psycopg...), not SQLite's."""
    origin = type(getattr(exc, "orig", None) or exc).__module__ or ""
    return origin.split(".")[0] not in ("sqlite3", "_sqlite3", "pysqlite2")


_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@]*):(?P<password>.*)@"
                       r"(?P<rest>[^@]*)$")


def display_url(url: str) -> str:
    """A catalog URL as the user wrote it, its password (if any) replaced by ``***``: what
    messages show (never re-rendered, so a mangled URL reads as it was given).

    Example:
        >>> display_url("postgresql+psycopg://icl:secret@db:5432/icl?sslmode=require")
        'postgresql+psycopg://icl:***@db:5432/icl?sslmode=require'
    """
    m = _PASSWORD.match(str(url))
    return str(url) if m is None else f"{m['head']}:***@{m['rest']}"


class CatalogMissing(StoreError):
    """The catalog is missing or empty while ``experiments/`` holds shards or checkpoints:
    ``icl verify --rebuild`` re-creates it from the files; nothing else may write."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, Slurm and ``kill`` send), raised where Ctrl-C's
    KeyboardInterrupt would be, so a step stops the same clean way."""
