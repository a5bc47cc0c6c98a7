"""Schema 3: an attack's method (``fgsm``, ``pgd``...) joins its key, its settings go in
``params``; the attacks recorded before are FGSM with no params.

SQLite cannot change a table's unique key in place, so the table is re-created on every
backend alike: its rows go to a temporary table, ``attacks`` is made anew, and they come
back in id order (with new ids, so that PostgreSQL's new id sequence hands out none of
theirs again; nothing refers to an attack row) and the new columns' defaults.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations import set_schema_version

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEPT = "experiment_id, round, against_experiment, against_round, eps, counts, created_at"


def upgrade() -> None:
    op.execute("CREATE TEMPORARY TABLE attacks_v2 AS SELECT * FROM attacks")
    op.drop_table("attacks")  # with its index
    op.create_table(
        "attacks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("against_experiment", sa.String(64), nullable=False),
        sa.Column("against_round", sa.Integer(), nullable=False),
        sa.Column("eps", sa.Float(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False, server_default="fgsm"),
        sa.Column("params", sa.JSON()),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("experiment_id", "round", "against_experiment", "against_round",
                            "eps", "method"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_attacks_experiment_id", "attacks", ["experiment_id"])
    op.execute(f"INSERT INTO attacks ({KEPT}) SELECT {KEPT} FROM attacks_v2 ORDER BY id")
    op.execute("DROP TABLE attacks_v2")
    set_schema_version(3)


def downgrade() -> None:
    raise NotImplementedError("icl never downgrades a catalog (an older icl refuses a newer "
                              "one: upgrade that icl instead)")
