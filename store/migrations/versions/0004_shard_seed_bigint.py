"""Schema 4: ``shards.seed`` holds 64-bit integers. A synthesize step's seed is 63 bits
(``icl_cli.steps.common.derive_seed``); PostgreSQL's INTEGER is 32, so recording the first
shard failed with "integer out of range". SQLite's INTEGER already holds 64 bits: there
only the version changes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations import set_schema_version

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("shards", "seed", type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=True)
    set_schema_version(4)


def downgrade() -> None:
    raise NotImplementedError("icl never downgrades a catalog (an older icl refuses a newer "
                              "one: upgrade that icl instead)")
