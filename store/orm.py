"""The catalog's SQLAlchemy half: ORM tables, the engine, write transactions, the schema.

One row per artefact: experiments (with their full config and data fingerprint), shards
(one per round and version), checkpoints (one per round), evaluations, attacks, per-round
metrics (training and sampler diagnostics), and the step log. Only the store reads these
rows; callers get frozen dataclasses (``store.infos``, made by :func:`to_info`).

Imported only when something writes, creates or upgrades the catalog, or when the catalog
is not a plain SQLite file (``ICL_CATALOG_URL``, e.g. PostgreSQL): reads of a SQLite
catalog go through ``store.reader`` with the standard library's ``sqlite3``, so the
read-only commands never pay for SQLAlchemy's import. :class:`~store.catalog.Catalog` is
the part of the store that chooses. SQLAlchemy errors stop here
(``store.errors.catalog_errors``): a database that cannot be used is
:class:`CatalogUnusable`, one that is damaged is :class:`CatalogDamaged`, with the file
named. The schema's version, revisions and shared settings come from ``store.schema``.

SQLite (the default, ``<ws>/.icl/catalog.db``) runs in WAL mode with foreign keys on, a
30 s busy timeout and ``BEGIN IMMEDIATE`` for writes, plus a retry loop, so concurrent icl
processes queue instead of failing with "database is locked". Any other SQLAlchemy URL
(``ICL_CATALOG_URL``, e.g. PostgreSQL) works too.

The schema (:func:`migrate`) is versioned the same way on every backend: a new catalog is
made by ``create_all`` and stamped at the head Alembic revision, an older one is brought to
the head by the migrations of ``store/migrations`` (Alembic, imported only then), in one
transaction that holds the catalog's write lock.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import StoreError, catalog_errors, display_url
from .infos import ExperimentInfo, to_info
from .schema import (
    ALEMBIC_VERSION_TABLE,
    BUSY_TIMEOUT_MS,
    FINISHED_STEPS_TABLE,
    KNOWN_REVISIONS,
    REFERENCE_NETS_TABLE,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TABLE,
    WORKSPACE_PLACES_TABLE,
    schema_revision,
    utcnow,
)

T = TypeVar("T")


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = SCHEMA_VERSION_TABLE
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str | None] = mapped_column(String(32))
    parent_name: Mapped[str | None] = mapped_column(String(64))
    parent_round: Mapped[int | None] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # sha256 of which images the experiment trains and validates on (icl_cli.data).
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))


class _RoundRow:
    """What every per-round row has: its id, experiment, round and when it was written."""

    # sort_order: id, experiment_id, round first and created_at last, as in schema 1.
    id: Mapped[int] = mapped_column(primary_key=True, sort_order=-3)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True, sort_order=-2)
    round: Mapped[int] = mapped_column(Integer, sort_order=-1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, sort_order=99)


class Shard(_RoundRow, Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("experiment_id", "round", "version"),)
    version: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    path: Mapped[str] = mapped_column(Text)  # relative to the workspace root
    sha256: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    sampler_config: Mapped[dict] = mapped_column(JSON)
    # 63-bit seeds (derive_seed): BIGINT; SQLite's INTEGER is 64 bits already.
    seed: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    source_checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))


class Checkpoint(_RoundRow, Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("experiment_id", "round"),)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    # The parent may belong to another experiment (``--from``); it is kept by hash too so
    # the lineage survives a replaced parent row.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    parent_sha256: Mapped[str | None] = mapped_column(String(64))
    config_hash: Mapped[str | None] = mapped_column(String(64))


class Evaluation(_RoundRow, Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("experiment_id", "round", "split"),)
    split: Mapped[str] = mapped_column(String(32))
    error: Mapped[float] = mapped_column(Float)
    per_class: Mapped[list] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer)


class Attack(_RoundRow, Base):
    __tablename__ = "attacks"
    __table_args__ = (
        UniqueConstraint(
            "experiment_id", "round", "against_experiment", "against_round", "eps", "method"
        ),
    )
    against_experiment: Mapped[str] = mapped_column(String(64))
    against_round: Mapped[int] = mapped_column(Integer)
    eps: Mapped[float] = mapped_column(Float)
    # "fgsm", "pgd", ...; its settings (steps, step_size, restarts, random_start) in params.
    method: Mapped[str] = mapped_column(String(16), default="fgsm", server_default="fgsm")
    params: Mapped[dict | None] = mapped_column(JSON)
    counts: Mapped[dict] = mapped_column(JSON)


class RoundMetric(_RoundRow, Base):
    """One named number per (experiment, round): what a step measured besides the error
    (largest gradient norm, largest |logit|, share of pixels outside the data range...)."""

    __tablename__ = "round_metrics"
    __table_args__ = (UniqueConstraint("experiment_id", "round", "name"),)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)


class Step(Base):
    __tablename__ = "steps"
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    round: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seconds: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # running | ok | failed | interrupted
    message: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    # Schema 6: where the step ran (``store.steplog``; NULL for older steps).
    environment: Mapped[dict | None] = mapped_column(JSON)


class FinishedStep(Base):
    """Schema 7: what a finished step printed (``document``: its ``--json`` result) and
    what it was made from, so that the same command again answers from here without
    running (``store.finished``). One row per (experiment, command, slot): ``slot`` is the
    canonical JSON of what the step's catalog records are keyed by (a round, an attack's
    other model and eps...), so a later run of the slot with other settings replaces it;
    ``settings`` is everything the result depends on (settings, input hashes), ``files``
    the files it read and wrote with their sha256, size and mtime at record time."""

    __tablename__ = FINISHED_STEPS_TABLE
    __table_args__ = (UniqueConstraint("experiment_id", "command", "slot"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    command: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict] = mapped_column(JSON)
    files: Mapped[list] = mapped_column(JSON)
    document: Mapped[Any] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkspacePlace(Base):
    """Where the workspace this catalog serves lives: its id (``<ws>/.icl/workspace-id``, a
    random uuid), a folder it was seen at (one row per place: a workspace on shared storage
    may be mounted at another path on another machine, each adopted with ``icl verify
    --adopt``), the host that recorded it, and the database the row was written in (a
    catalog copied to another database does not serve the original's workspace any more)."""

    __tablename__ = WORKSPACE_PLACES_TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    catalog: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReferenceNet(Base):
    """A reference net of ``.icl/references/`` (``icl quality``), trusted through this
    row's sha256: ``key`` is the hash of what the net is a function of, ``path`` its file
    relative to the workspace."""

    __tablename__ = REFERENCE_NETS_TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, foreign keys, busy timeout on every connection; explicit BEGIN so that writes
    take the database lock up front (``BEGIN IMMEDIATE``), where the busy timeout applies,
    instead of failing on a read-to-write upgrade."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets the concurrency settings above. A URL that does
    not parse, or whose database driver is not installed, is a StoreError (one line)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = display_url(url)  # as given, only a password hidden
    # SQLAlchemy's pool logs a connection it failed to close or reset, traceback and all,
    # then re-raises an interrupt or drops the connection: on stderr (where nothing
    # handles logging) that is a second line beside the command's one.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            _sqlite_setup(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
            # An interrupt that lands while psycopg talks to the server makes it log
            # "error ignored in rollback ..." as a warning on stderr, beside the one line
            # the interrupt itself becomes; its errors still reach us as exceptions.
            logging.getLogger("psycopg").setLevel(logging.ERROR)
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        driver = getattr(exc, "name", None) or str(exc).split(":")[-1].strip()
        raise StoreError(f"the catalog URL {shown!r} needs the database driver "
                         f"{driver!r}, which is not installed (for PostgreSQL: pip install "
                         "'psycopg[binary]')") from None
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number...
        raise StoreError(f"the catalog URL {shown!r} (ICL_CATALOG_URL) is not a database URL, "
                         "e.g. postgresql+psycopg://user@host/db") from None
    engine.icl_url = shown
    return engine


def shown_url(engine: Engine) -> str:
    """The catalog URL of ``engine`` for messages: as the user gave it, password hidden."""
    return getattr(engine, "icl_url", None) or engine.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class SchemaState:
    """What a catalog says of its schema: whether it has icl's tables at all, the version in
    ``schema_version`` (None: none recorded) and the Alembic revision (None: not stamped,
    e.g. made by an icl before Alembic)."""

    exists: bool
    version: int | None
    revision: str | None

    def refuse(self, missing_ok: bool, url: Any) -> None:
        """StoreError for a catalog a newer icl wrote (by version or by a revision this icl
        does not know), or one without icl's tables unless ``missing_ok``."""
        if not self.exists:
            if missing_ok:
                return
            raise StoreError(f"catalog {url} has no icl schema; run `icl init` to create it")
        if self.version is not None and self.version > SCHEMA_VERSION:
            raise StoreError(f"catalog schema {self.version} is newer than this icl "
                             f"({SCHEMA_VERSION}); upgrade icl")
        if self.revision is not None and self.revision not in KNOWN_REVISIONS:
            raise StoreError(f"catalog schema revision {self.revision!r} is newer than this "
                             f"icl ({SCHEMA_REVISION}); upgrade icl")

    def settled(self, create: bool) -> bool:
        """True when nothing is to be done: the head schema, stamped at the head revision
        (``create``) or not stamped yet (a read leaves that to the next ``create``), or,
        when only opening, no version to upgrade from (a creation cut short, which the
        next ``create`` finishes)."""
        if self.version == SCHEMA_VERSION:
            return self.revision == SCHEMA_REVISION or (not create and self.revision is None)
        return not create and self.version is None


def schema_state(conn: Connection) -> SchemaState:
    look = inspect(conn)
    if not look.has_table(SchemaVersion.__tablename__):
        return SchemaState(False, None, None)
    version = conn.scalar(select(SchemaVersion.version).order_by(SchemaVersion.version.desc()))
    revision = None
    if look.has_table(ALEMBIC_VERSION_TABLE):
        found = sorted(conn.exec_driver_sql(
            f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}").scalars())
        revision = ",".join(found) or None  # several (branches): none this icl knows
    return SchemaState(True, version, revision)


@contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the catalog's write lock from its first statement, as every
    write does (``write_session``): SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's
    transaction-level advisory lock (``locking.catalog_write_lock``). Of two processes
    creating or upgrading a catalog at once, the second waits, then reads the schema the
    first left; no write runs half-way through an upgrade."""
    from .locking import catalog_write_lock

    with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
        catalog_write_lock(conn)
        yield conn


def _set_version(conn: Connection) -> None:
    conn.execute(SchemaVersion.__table__.delete())
    conn.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))


def migrate(engine: Engine, create: bool) -> None:
    """Bring the catalog to the head schema in one transaction, on SQLite and PostgreSQL
    alike (``store/migrations``). ``create``: a catalog without icl's tables is made
    (``create_all`` and stamped at the head revision, Alembic's recipe) and tables a
    partial one lacks are added; else such a catalog is refused. A catalog of an older
    version (made before Alembic or after) is stamped at that version's revision, then
    upgraded; a newer one is refused, and a current one is left untouched."""
    from . import migrations

    with engine.connect() as conn:  # no lock to refuse, or to find nothing to do
        state = schema_state(conn)
    state.refuse(missing_ok=create, url=shown_url(engine))
    if state.settled(create):
        return
    with _schema_transaction(engine) as conn:
        state = schema_state(conn)  # again, under the lock
        state.refuse(missing_ok=create, url=shown_url(engine))
        if state.settled(create):
            return
        if not state.exists or state.version is None:  # new, or its creation cut short
            Base.metadata.create_all(conn)
            _set_version(conn)
            migrations.stamp(conn, SCHEMA_REVISION)
            return
        # The recorded version wins over a stamp that disagrees with it: each revision
        # writes both, and an icl before Alembic changed the schema by the version alone.
        start = schema_revision(state.version)
        if state.revision != start:
            migrations.stamp(conn, start)
        if start != SCHEMA_REVISION:
            migrations.upgrade(conn, SCHEMA_REVISION)
        if create:
            Base.metadata.create_all(conn)  # checkfirst: only tables a partial catalog lacks


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction holds the write lock from its first statement and
    commits on exit (rolls back on error): SQLite's BEGIN IMMEDIATE, PostgreSQL's
    transaction-level advisory lock (``locking.catalog_write_lock``)."""
    from .locking import catalog_write_lock

    bound = engine.execution_options(sqlite_begin="IMMEDIATE")
    with Session(bound, expire_on_commit=False) as s, s.begin():
        catalog_write_lock(s)
        yield s


def run_write(engine: Engine, fn: Callable[[Session], T], attempts: int = 8) -> T:
    """Run ``fn(session)`` in one write transaction, retrying the whole transaction when
    the database stays locked past the busy timeout (a long writer elsewhere), so that
    "database is locked" never reaches the user while progress is possible."""
    with catalog_errors():
        for attempt in range(attempts):
            try:
                return _held_write(engine, fn)
            except OperationalError as exc:
                if not _is_locked(exc) or attempt == attempts - 1:
                    if _is_locked(exc):
                        raise StoreError(
                            f"catalog {shown_url(engine)} stayed locked by another process; "
                            "retry when it finishes (see `icl status`)"
                        ) from exc
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (1 + random.random()))
    raise AssertionError("unreachable")


def _held_write(engine: Engine, fn: Callable[[Session], T]) -> T:
    """One write transaction with Ctrl-C and SIGTERM held until its connection is back in
    the pool (``store.interrupts``); an interrupt that came meanwhile is raised after it,
    in place of its result or its error."""
    from .interrupts import ctrl_c_held, interrupt

    with ctrl_c_held() as pressed:
        try:
            with write_session(engine) as s:
                outcome: tuple[bool, Any] = (True, fn(s))
        except BaseException as exc:  # (an interrupt held meanwhile goes first)
            outcome = (False, exc)
    if pressed:
        raise interrupt(pressed)
    done, value = outcome
    if not done:
        raise value
    return value


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A plain session for reads (WAL readers never block writers)."""
    with catalog_errors(), Session(engine, expire_on_commit=False) as s:
        yield s


def experiment_info(row: Experiment) -> ExperimentInfo:
    return to_info(ExperimentInfo, row, parent=row.parent_name, config=dict(row.config or {}))
