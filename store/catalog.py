"""The catalog part of a store: one database of experiments, shards, checkpoints,
evaluations, attacks, round metrics and the step log.

:class:`Catalog` reads through ``store.reader`` (plain SQL; a SQLite file through the
standard library's ``sqlite3``) and writes, creates and upgrades through ``store.orm``
(SQLAlchemy, imported only then, or from the start when the catalog is not a SQLite file:
``ICL_CATALOG_URL``, e.g. PostgreSQL). So a command that only reads a SQLite catalog
(``icl status``, ``report``, ``verify``) never imports SQLAlchemy. The ORM's names
(``Experiment``, ``Shard``, ``run_write``...) are still importable from here.

The schema is versioned by Alembic (``store/migrations``, one revision per schema
version) and, for every icl old or new, by the number in its ``schema_version`` table
(``store.schema``: ``SCHEMA_VERSION`` and its revisions, also importable from here). It is
checked on open: a catalog written by a newer icl is refused, an older one is upgraded in
place (``store.orm.migrate``), a current one is read as is, without SQLAlchemy or Alembic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ExperimentNotFound, catalog_errors, first_line
from .infos import ExperimentInfo, to_info
from .reader import CatalogReader, EngineSource, SqliteFile, sqlite_file
from .schema import (
    BUSY_TIMEOUT_MS,
    KNOWN_REVISIONS,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    schema_revision,
    utcnow,
)
from .workspace import validate_name

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from .orm import Experiment

__all__ = ["BUSY_TIMEOUT_MS", "KNOWN_REVISIONS", "SCHEMA_REVISION", "SCHEMA_VERSION",
           "Catalog", "first_line", "schema_revision", "to_info", "utcnow"]

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    """The ORM's names (tables, sessions, schema functions), imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from . import orm

    try:
        return getattr(orm, name)
    except AttributeError:
        raise AttributeError(f"module 'store.catalog' has no attribute {name!r}") from None


class Catalog:
    """The catalog part of a store: one database (``url``) for the workspace at ``root``.

    ``reader`` answers every read (``store.reader``); ``engine`` (SQLAlchemy, made on first
    use) takes the writes. ``row`` is the ORM row of an experiment inside a write;
    ``experiment`` its info (None: the most recent one).

    Example:
        >>> cat = Catalog(f"sqlite:///{tmp_path}/catalog.db", tmp_path)   # doctest: +SKIP
        >>> cat.create(); cat.experiments()
        []
    """

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        path = sqlite_file(url)
        if path is None:  # a server: SQLAlchemy now (a URL that cannot work fails here)
            self.reader = CatalogReader(EngineSource(self.engine), root)
        else:
            self.reader = CatalogReader(SqliteFile(path), root)

    @cached_property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (writes, schema, a server's reads and advisory locks)."""
        from .orm import make_engine

        return make_engine(self.url)

    @property
    def server(self) -> Engine | None:
        """The engine when the catalog lives on a database server (not a SQLite file)."""
        return None if self.url.startswith("sqlite") else self.engine

    def create(self) -> None:
        """Create the schema (idempotent) and bring an older one up to date (stamping one
        that an icl before Alembic made); a current one is only read."""
        if self._schema() == (SCHEMA_VERSION, SCHEMA_REVISION):
            return
        from .orm import migrate

        with catalog_errors():
            migrate(self.engine, create=True)

    def open(self) -> None:
        """Check the schema (refuse a newer one or none) and upgrade an older one; a
        current one is only read (no SQLAlchemy, no Alembic), stamped or not yet."""
        version, revision = self._schema()
        if version == SCHEMA_VERSION and revision in (None, SCHEMA_REVISION):
            return
        from .orm import migrate

        with catalog_errors():
            migrate(self.engine, create=False)

    def _schema(self) -> tuple[int | None, str | None]:
        """The catalog's schema version and Alembic revision, as the reader finds them."""
        return self.reader.version(), self.reader.revision()

    def identity(self) -> str | None:
        """Which database this is, as the database itself says (not as a URL names it):
        a SQLite file's real path; PostgreSQL's cluster id and database name. A copy of
        the catalog in another database has another identity; None where none can be told.
        """
        path = sqlite_file(self.url)
        if path is not None:
            return f"sqlite:{os.path.realpath(path)}"
        engine = self.engine
        if engine.dialect.name != "postgresql":
            url = engine.url
            return f"{engine.dialect.name}:{url.host or ''}:{url.port or ''}:{url.database}"
        with catalog_errors(), engine.connect() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar()
        from sqlalchemy.exc import DBAPIError

        try:  # the cluster's id: readable by every role on PostgreSQL, if not revoked
            with engine.connect() as conn:
                cluster = conn.exec_driver_sql(
                    "SELECT system_identifier FROM pg_control_system()").scalar()
        except DBAPIError:
            with catalog_errors(), engine.connect() as conn:
                port = conn.exec_driver_sql("SELECT current_setting('port')").scalar()
            cluster = f"port {port}"
        return f"postgresql:{cluster}:{name}"

    def has_schema(self) -> bool:
        """True if the database holds icl's tables (an emptied or new file does not)."""
        return self.reader.has_schema()

    def close(self) -> None:
        self.reader.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def read(self):
        """An ORM read session (context manager), for reads inside the write path."""
        from .orm import read_session

        return read_session(self.engine)

    def write(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one write transaction (retried while the database is busy)."""
        from .orm import run_write

        return run_write(self.engine, fn)

    def _not_found(self, name: str, known: list[str]) -> ExperimentNotFound:
        return ExperimentNotFound(
            f"no experiment '{name}' in {self.root}; known: {', '.join(known) or 'none'} "
            "(create one with `icl init`)"
        )

    def row(self, s: Session, name: str) -> Experiment:
        """The experiment row named ``name`` in session ``s``; ExperimentNotFound lists the
        known names."""
        from sqlalchemy import select

        from .orm import Experiment

        row = s.scalar(select(Experiment).where(Experiment.name == name))
        if row is None:
            raise self._not_found(name, s.scalars(
                select(Experiment.name).order_by(Experiment.name)).all())
        return row

    def experiment(self, name: str | None = None) -> ExperimentInfo:
        """The named experiment; None: the only one, or the most recently created."""
        if name is not None:
            found = self.reader.experiment(validate_name(name))
            if found is None:
                raise self._not_found(name, self.reader.names())
            return found
        found = self.reader.latest_experiment()
        if found is None:
            raise ExperimentNotFound(
                f"no experiments in {self.root} yet; create one with `icl init`")
        return found

    def experiments(self) -> list[ExperimentInfo]:
        """All experiments, oldest first."""
        return self.reader.experiments()

    def names(self) -> set[str]:
        """The names of all experiments (empty when there is no schema yet)."""
        return set(self.reader.names()) if self.has_schema() else set()
