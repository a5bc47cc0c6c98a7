"""Schema 7: the ``finished_steps`` table, what each finished step printed (its ``--json``
document), the settings and input hashes it was made with, and the sha256, size and mtime
of the files it read and wrote: running the same command again answers from this row
without importing torch (``store.finished``). It starts empty: results recorded before it
are found by their commands' normal path, as before.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations import set_schema_version

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "finished_steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("slot", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("experiment_id", "command", "slot"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_finished_steps_experiment_id", "finished_steps", ["experiment_id"])
    set_schema_version(7)


def downgrade() -> None:
    raise NotImplementedError("icl never downgrades a catalog (an older icl refuses a newer "
                              "one: upgrade that icl instead)")
