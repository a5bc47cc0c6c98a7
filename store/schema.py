"""What every part of the store agrees on about the catalog's schema: its version, the
Alembic revision of each version, the tables that say which schema a catalog has, how long
a connection waits for a writer, and the timestamps rows carry.

A leaf: it imports no other store module (nor SQLAlchemy), so the ORM (``store.orm``), the
plain-SQL reader (``store.reader``), the locks and :class:`~store.catalog.Catalog` all take
these from here instead of from each other.

Example:
    >>> schema_revision(SCHEMA_VERSION) == SCHEMA_REVISION == "0007"
    True
"""

from __future__ import annotations

from datetime import datetime, timezone

SCHEMA_VERSION = 7
"""1: the first catalog. 2: ``experiments.data_fingerprint`` and the ``round_metrics``
table. 3: ``attacks.method`` (part of the attack's key; older rows are ``fgsm``) and
``attacks.params``. 4: ``shards.seed`` a 64-bit integer (PostgreSQL's INTEGER is 32 bits).
5: the ``workspace_places`` table (which workspace a catalog serves) and the
``reference_nets`` table (the sha256 of each cached reference net). 6:
``steps.environment`` (where each step ran: device, CPU/GPU model, versions, determinism).
7: the ``finished_steps`` table (each finished step's printed result, its settings and the
size and mtime of its files: a rerun answers from it, ``store.finished``).
The migrations in ``store/migrations`` bring an older catalog to it in place."""


def schema_revision(version: int) -> str:
    """The Alembic revision of schema ``version`` (``store/migrations/versions``)."""
    return f"{version:04d}"


SCHEMA_REVISION = schema_revision(SCHEMA_VERSION)
"""The head revision: what a current catalog's ``alembic_version`` holds."""
KNOWN_REVISIONS = frozenset(schema_revision(v) for v in range(1, SCHEMA_VERSION + 1))
"""Every revision this icl knows; a catalog stamped at any other was written by a newer
icl."""

WORKSPACE_PLACES_TABLE = "workspace_places"
"""Schema 5: the workspace a catalog serves, one row per folder it was seen at."""
REFERENCE_NETS_TABLE = "reference_nets"
"""Schema 5: the sha256 of each reference net of ``.icl/references/``."""

FINISHED_STEPS_TABLE = "finished_steps"
"""Schema 7: each finished step's printed result, settings and files (``store.finished``)."""

SCHEMA_VERSION_TABLE = "schema_version"
"""The table whose one row holds the schema version (read by every icl, old or new); a
database without it holds no icl catalog."""
ALEMBIC_VERSION_TABLE = "alembic_version"
"""Alembic's table: the revision the catalog is stamped at (none before Alembic)."""

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for a writer elsewhere before "database is locked",
on both read paths (the engine of ``store.orm`` and the ``sqlite3`` of ``store.reader``)."""


def utcnow() -> datetime:
    """Now, timezone-aware UTC: the ``created_at`` and ``started_at`` of new rows."""
    return datetime.now(timezone.utc)
