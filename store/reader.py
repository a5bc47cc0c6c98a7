"""Every read of the catalog, in plain SQL, for every backend: the one place these queries
live.

A SQLite catalog file (the default ``<ws>/.icl/catalog.db``) is read through the standard
library's ``sqlite3`` (:class:`SqliteFile`), so ``icl status``, ``icl report`` and ``icl
verify`` never import SQLAlchemy; any other catalog (``ICL_CATALOG_URL``, e.g. PostgreSQL)
runs the same statements through its SQLAlchemy engine (:class:`EngineSource`). Rows come
back as the frozen dataclasses of ``store.infos``, decoded as the ORM of ``store.orm``
would decode them: JSON columns parsed, timestamps timezone-aware (UTC where the database
keeps none), booleans as ``bool``. Writes never come here (``store.orm``), and a catalog of
an older schema is upgraded before anything reads it (``Catalog.open``).

Example:
    >>> reader = CatalogReader(SqliteFile(root / ".icl/catalog.db"), root)  # doctest: +SKIP
    >>> [e.name for e in reader.experiments()]
    ['baseline', 'icl-noise', 'icl']
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .errors import catalog_damaged, catalog_errors, catalog_unusable, first_line
from .infos import (
    AttackInfo,
    CheckpointInfo,
    EvaluationInfo,
    ExperimentInfo,
    ShardInfo,
    StepInfo,
)
from .schema import (
    ALEMBIC_VERSION_TABLE,
    BUSY_TIMEOUT_MS,
    FINISHED_STEPS_TABLE,
    REFERENCE_NETS_TABLE,
    SCHEMA_VERSION_TABLE,
    WORKSPACE_PLACES_TABLE,
)

_INHERITED: list = []  # connections a forked child must neither use nor close


def sqlite_url(path: Path) -> str:
    """The ``sqlite:///PATH`` URL of a file, its path percent-escaped (``?``, ``#``, ``%``,
    spaces...), so that SQLAlchemy and MLflow read the same file back, never a prefix of
    its path cut at a ``?``.

    Example:
        >>> sqlite_url(Path("/data/run?1/.icl/catalog.db"))
        'sqlite:////data/run%3F1/.icl/catalog.db'
    """
    return "sqlite:///" + quote(str(path), safe="/")


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL (percent-escapes decoded, as SQLAlchemy
    decodes them); None for any other catalog (a server, a SQLite URL with a driver,
    options or in memory), which the engine reads instead."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    path = unquote(url[len(prefix):])
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """sqlite3's errors as the store's own, worded as ``store.errors.catalog_errors`` words
    SQLAlchemy's (the same lines on either path)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise catalog_unusable(first_line(exc)) from exc
    except sqlite3.DatabaseError as exc:
        raise catalog_damaged(first_line(exc)) from exc


class SqliteFile:
    """Statements on one SQLite file through ``sqlite3``: one connection per process,
    opened on first use with the engine's settings (busy timeout, foreign keys, WAL), each
    statement in autocommit (a WAL reader sees the last commit and never blocks a writer).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._guard, _sqlite_errors():
            if self._conn is not None and self._pid != os.getpid():  # forked: not ours
                _INHERITED.append(self._conn)
                self._conn = None
            if self._conn is None:
                self._conn, self._pid = self._connect(), os.getpid()
            return self._conn.execute(sql, tuple(params)).fetchall()

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (name,)))

    def close(self) -> None:
        with self._guard:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class EngineSource:
    """The same statements through a SQLAlchemy engine (``?`` placeholders turned into the
    driver's ``%s`` where it needs them), its errors mapped by ``store.errors``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self.engine.dialect.paramstyle in ("format", "pyformat"):
            sql = sql.replace("?", "%s")
        with catalog_errors(), self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(params)).all()]

    def has_table(self, name: str) -> bool:
        from sqlalchemy import inspect

        with catalog_errors():
            return inspect(self.engine).has_table(name)

    def close(self) -> None:
        pass  # the engine is the catalog's to dispose of


# Columns as "<sql> AS <info field>" where the names differ; decoded by field name.
_JSON = {"config", "sampler_config", "per_class", "counts", "params", "environment"}
_TIME = {"created_at", "started_at", "finished_at"}
_BOOL = {"active"}
EXPERIMENT = ("x.id", "x.name", "x.config", "x.config_hash", "x.method",
              "x.parent_name AS parent", "x.created_at", "x.mlflow_run_id", "x.parent_round",
              "x.data_fingerprint")
SHARD = ("x.name AS experiment", "s.round", "s.version", "s.active", "s.path", "s.sha256",
         "s.count", "s.sampler_config", "s.seed",
         "s.source_checkpoint_sha256 AS source_checkpoint", "s.created_at")
CHECKPOINT = ("x.name AS experiment", "c.round", "c.path", "c.sha256", "c.parent_sha256",
              "c.config_hash", "c.created_at")
EVALUATION = ("x.name AS experiment", "v.round", "v.split", "v.error", "v.per_class", "v.n",
              "v.created_at")
ATTACK = ("x.name AS experiment", "a.round", "a.against_experiment", "a.against_round",
          "a.eps", "a.counts", "a.created_at", "a.method", "a.params")
STEP = ("x.name AS experiment", "s.name", "s.round", "s.state", "s.seconds", "s.started_at",
        "s.finished_at", "s.message", "s.config_hash", "s.config", "s.pid", "s.id", "s.host",
        "s.environment")


def _field(column: str) -> str:
    return column.split(" AS ")[-1].split(".")[-1]


def _decode(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field in _JSON:
        return json.loads(value) if isinstance(value, str | bytes) else value
    if field in _TIME:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    if field in _BOOL:
        return bool(value)
    return value


class CatalogReader:
    """The catalog's reads (``source``: :class:`SqliteFile` or :class:`EngineSource`) for
    the workspace at ``root`` (shard and checkpoint paths come back absolute). Names are
    taken as given: the caller has resolved them (``Catalog.experiment``)."""

    def __init__(self, source: SqliteFile | EngineSource, root: Path) -> None:
        self.source, self.root = source, root

    def _select(self, columns: Sequence[str], rest: str,
                params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        fields = [_field(c) for c in columns]
        rows = self.source.rows(f"SELECT {', '.join(columns)} {rest}", params)
        return [{f: _decode(f, v) for f, v in zip(fields, row, strict=True)} for row in rows]

    def close(self) -> None:
        self.source.close()

    # ---------------------------------------------------------------- schema
    def has_schema(self) -> bool:
        """True if the database holds icl's tables (an emptied or new file does not)."""
        return self.source.has_table(SCHEMA_VERSION_TABLE)

    def version(self) -> int | None:
        """The schema version the catalog says it has; None without one."""
        if not self.has_schema():
            return None
        found = self.source.rows(
            f"SELECT version FROM {SCHEMA_VERSION_TABLE} ORDER BY version DESC")
        return found[0][0] if found else None

    def revision(self) -> str | None:
        """The Alembic revision the catalog is stamped at (``store/migrations``); None where
        it is not (no schema yet, or made by an icl before Alembic). Several (branches,
        which icl never makes) come back joined, as one revision no icl knows."""
        if not self.source.has_table(ALEMBIC_VERSION_TABLE):
            return None
        found = sorted(r[0] for r in self.source.rows(
            f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}"))
        return ",".join(found) or None

    # ------------------------------------------------------ schema 5's tables
    def places(self) -> list[tuple[str, str, str | None, str | None]]:
        """(workspace id, path, host, catalog) of every place the catalog's workspace was
        seen at, oldest first; empty before schema 5 or before any workspace used it."""
        if not self.source.has_table(WORKSPACE_PLACES_TABLE):
            return []
        return [tuple(r) for r in self.source.rows(
            "SELECT workspace_id, path, host, catalog FROM workspace_places ORDER BY id")]

    def reference(self, key: str) -> tuple[str, str] | None:
        """(path, sha256) of the reference net recorded under ``key``, or None."""
        if not self.source.has_table(REFERENCE_NETS_TABLE):
            return None
        found = self.source.rows("SELECT path, sha256 FROM reference_nets WHERE key = ?",
                                 (key,))
        return (found[0][0], found[0][1]) if found else None

    def finished(self, experiment: str, command: str, slot: str
                 ) -> tuple[dict, list, Any] | None:
        """(settings, files, document) of the finished step recorded for ``slot`` (its
        canonical text) of ``command`` in ``experiment``, or None (schema 7's table)."""
        found = self.source.rows(
            f"SELECT f.settings, f.files, f.document FROM {FINISHED_STEPS_TABLE} f JOIN "
            "experiments x ON f.experiment_id = x.id WHERE x.name = ? AND f.command = ? "
            "AND f.slot = ?", (experiment, command, slot))
        if not found:
            return None
        return tuple(json.loads(v) if isinstance(v, str | bytes) else v for v in found[0])

    # ----------------------------------------------------------- experiments
    def _experiments(self, rest: str, params: Sequence[Any] = ()) -> list[ExperimentInfo]:
        rows = self._select(EXPERIMENT, f"FROM experiments x {rest}", params)
        return [ExperimentInfo(**{**r, "config": dict(r["config"] or {})}) for r in rows]

    def experiment(self, name: str) -> ExperimentInfo | None:
        found = self._experiments("WHERE x.name = ?", (name,))
        return found[0] if found else None

    def latest_experiment(self) -> ExperimentInfo | None:
        """The most recently created experiment, or None."""
        found = self._experiments("ORDER BY x.created_at DESC, x.id DESC LIMIT 1")
        return found[0] if found else None

    def experiments(self) -> list[ExperimentInfo]:
        """All experiments, oldest first."""
        return self._experiments("ORDER BY x.created_at, x.id")

    def names(self) -> list[str]:
        """Every experiment's name, sorted."""
        return [r[0] for r in self.source.rows("SELECT name FROM experiments ORDER BY name")]

    # ------------------------------------------------------------- artefacts
    def shards(self, experiment: str, round: int | None = None,
               active_only: bool = False) -> list[ShardInfo]:
        """Shards of an experiment, by round then version."""
        where, params = ["x.name = ?"], [experiment]
        if round is not None:
            where.append("s.round = ?")
            params.append(round)
        if active_only:
            where.append("s.active = ?")
            params.append(True)
        rows = self._select(SHARD, "FROM shards s JOIN experiments x ON s.experiment_id = x.id "
                            f"WHERE {' AND '.join(where)} ORDER BY s.round, s.version", params)
        return [ShardInfo(**{**r, "path": self.root / r["path"],
                             "sampler_config": dict(r["sampler_config"] or {})}) for r in rows]

    def checkpoints(self, experiment: str) -> list[CheckpointInfo]:
        """All checkpoints of an experiment, by round."""
        rows = self._select(CHECKPOINT, "FROM checkpoints c JOIN experiments x ON "
                            "c.experiment_id = x.id WHERE x.name = ? ORDER BY c.round",
                            (experiment,))
        return [CheckpointInfo(**{**r, "path": self.root / r["path"]}) for r in rows]

    # --------------------------------------------------------------- results
    def evaluations(self, experiment: str | None = None) -> list[EvaluationInfo]:
        """Evaluations by experiment, round, split."""
        where, params = ("WHERE x.name = ? ", (experiment,)) if experiment else ("", ())
        rows = self._select(EVALUATION, "FROM evaluations v JOIN experiments x ON "
                            f"v.experiment_id = x.id {where}ORDER BY x.name, v.round, v.split",
                            params)
        return [EvaluationInfo(**r) for r in rows]

    def attacks(self, experiment: str | None = None) -> list[AttackInfo]:
        """Attack records by experiment, round (then as recorded)."""
        where, params = ("WHERE x.name = ? ", (experiment,)) if experiment else ("", ())
        rows = self._select(ATTACK, "FROM attacks a JOIN experiments x ON "
                            f"a.experiment_id = x.id {where}ORDER BY x.name, a.round, a.id",
                            params)
        return [AttackInfo(**{**r, "method": r["method"] or "fgsm"}) for r in rows]

    def metrics(self, experiment: str) -> dict[int, dict[str, float | None]]:
        """{round: {name: value}} of one experiment's recorded round metrics."""
        out: dict[int, dict[str, float | None]] = {}
        for round_, name, value in self.source.rows(
                "SELECT m.round, m.name, m.value FROM round_metrics m JOIN experiments x ON "
                "m.experiment_id = x.id WHERE x.name = ? ORDER BY m.round, m.name",
                (experiment,)):
            out.setdefault(round_, {})[name] = value
        return out

    # ------------------------------------------------------------- step log
    def steps(self, experiment: str | None = None, name: str | None = None,
              round: int | None = None, states: Sequence[str] | None = None,
              last: int | None = None) -> list[tuple[StepInfo, str | None]]:
        """Step rows, oldest first, as (info with the state as recorded, host); filtered by
        experiment, step name, round, recorded state; ``last``: only the newest N."""
        where, params = [], []
        for column, value in (("x.name", experiment), ("s.name", name), ("s.round", round)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if states is not None:
            if not states:
                return []
            where.append(f"s.state IN ({', '.join('?' * len(states))})")
            params += list(states)
        rest = "FROM steps s JOIN experiments x ON s.experiment_id = x.id"
        rest += f" WHERE {' AND '.join(where)}" if where else ""
        if last is not None:
            rest += " ORDER BY s.started_at DESC, s.id DESC LIMIT ?"
            params.append(max(0, int(last)))
        else:
            rest += " ORDER BY s.started_at, s.id"
        rows = self._select(STEP, rest, params)
        if last is not None:
            rows.reverse()
        return [(StepInfo(**{k: v for k, v in r.items() if k != "host"}), r["host"])
                for r in rows]
