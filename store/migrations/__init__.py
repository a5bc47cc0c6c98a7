"""The catalog schema's history as Alembic migrations, one revision per schema version.

Revision ``000N`` is schema version N (``store.schema.SCHEMA_VERSION``, ``schema_revision``)::

    versions/0001_initial.py            the first catalog (icl 0.1)
    versions/0002_data_fingerprint.py   experiments.data_fingerprint, the round_metrics table
    versions/0003_attack_method.py      attacks.method (part of the attack's key), attacks.params
    versions/0004_shard_seed_bigint.py  shards.seed a BIGINT (63-bit seeds; PostgreSQL)
    versions/0005_workspace_and_references.py  the workspace_places and reference_nets tables
    versions/0006_step_environment.py   steps.environment (where each step ran)
    versions/0007_finished_steps.py     the finished_steps table (a rerun answers from it)

Each revision also writes its number into the ``schema_version`` table, which every icl
reads: an older icl refuses a newer catalog by it ("catalog schema N is newer than this
icl"), and a current one sees with the standard library's ``sqlite3`` that nothing is to be
done (``Catalog.open``), so neither SQLAlchemy nor Alembic is imported then.

``store.orm`` drives these on the connection of its schema transaction, which holds the
catalog's write lock (``env.py`` takes it from ``config.attributes``), through a
:class:`~alembic.config.Config` made here: no ``alembic.ini``, no logging configuration,
nothing written but the database's own tables (``alembic_version`` among them).

A new schema version: change the models (``store/orm.py``), add
``versions/000N_<what>.py`` (``down_revision`` the last one; its tables written out, not
imported from the models, and ``set_schema_version(N)`` last), bump ``SCHEMA_VERSION``
(``store/schema.py``). ``tests/store/test_store_catalog.py`` checks that the migrated
schema equals the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPTS = Path(__file__).resolve().parent


def config(connection: Any) -> Config:
    """Alembic's configuration for the catalog behind ``connection`` (a SQLAlchemy
    Connection, in the transaction the migrations join)."""
    from alembic.config import Config

    cfg = Config()  # no file: nothing read, no fileConfig, so Alembic prints nothing
    cfg.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def revisions() -> list[str]:
    """Every revision of the script folder, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(SCRIPTS))
    return [s.revision for s in reversed(list(script.walk_revisions("base", "heads")))]


def stamp(connection: Any, revision: str) -> None:
    """Record ``revision`` as the catalog's (``alembic_version``), replacing what was
    there; no schema change."""
    from alembic import command

    command.stamp(config(connection), revision, purge=True)


def upgrade(connection: Any, revision: str = "head") -> None:
    """Run the migrations from the stamped revision up to ``revision``."""
    from alembic import command

    command.upgrade(config(connection), revision)


def set_schema_version(version: int) -> None:
    """Inside a revision: the ``schema_version`` table says ``version`` (older icls read
    it)."""
    from alembic import op

    op.execute("DELETE FROM schema_version")
    op.execute(f"INSERT INTO schema_version (version) VALUES ({int(version)})")
