"""Schema 6: ``steps.environment``, where each step ran (the device and its CPU or GPU
model, the icl, torch and Python versions, the determinism settings): what ``icl report
--card`` shows beside each step. Steps recorded before it hold NULL ("not recorded").

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations import set_schema_version

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("steps", sa.Column("environment", sa.JSON()))
    set_schema_version(6)


def downgrade() -> None:
    raise NotImplementedError("icl never downgrades a catalog (an older icl refuses a newer "
                              "one: upgrade that icl instead)")
