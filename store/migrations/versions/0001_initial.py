"""Schema 1, the first catalog (icl 0.1): experiments, shards, checkpoints, evaluations,
attacks (keyed without a method) and the step log.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations import set_schema_version

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _experiment_id() -> sa.Column:
    return sa.Column("experiment_id", sa.Integer(), nullable=False)


def _cascade() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE")


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("method", sa.String(32)),
        sa.Column("parent_name", sa.String(64)),
        sa.Column("parent_round", sa.Integer()),
        sa.Column("mlflow_run_id", sa.String(64)),
        _created_at(),
    )
    op.create_table("schema_version", sa.Column("version", sa.Integer(), primary_key=True))
    op.create_table(
        "attacks",
        sa.Column("id", sa.Integer(), primary_key=True),
        _experiment_id(),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("against_experiment", sa.String(64), nullable=False),
        sa.Column("against_round", sa.Integer(), nullable=False),
        sa.Column("eps", sa.Float(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        _created_at(),
        sa.UniqueConstraint("experiment_id", "round", "against_experiment", "against_round",
                            "eps"),
        _cascade(),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        _experiment_id(),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.Integer()),
        sa.Column("parent_sha256", sa.String(64)),
        sa.Column("config_hash", sa.String(64)),
        _created_at(),
        sa.UniqueConstraint("experiment_id", "round"),
        _cascade(),
        sa.ForeignKeyConstraint(["parent_id"], ["checkpoints.id"], ondelete="SET NULL"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        _experiment_id(),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(32), nullable=False),
        sa.Column("error", sa.Float(), nullable=False),
        sa.Column("per_class", sa.JSON(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        _created_at(),
        sa.UniqueConstraint("experiment_id", "round", "split"),
        _cascade(),
    )
    op.create_table(
        "shards",
        sa.Column("id", sa.Integer(), primary_key=True),
        _experiment_id(),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sampler_config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("source_checkpoint_sha256", sa.String(64)),
        _created_at(),
        sa.UniqueConstraint("experiment_id", "round", "version"),
        _cascade(),
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        _experiment_id(),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("round", sa.Integer()),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("seconds", sa.Float()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("pid", sa.Integer()),
        sa.Column("host", sa.String(255)),
        _cascade(),
    )
    for table in ("attacks", "checkpoints", "evaluations", "shards", "steps"):
        op.create_index(f"ix_{table}_experiment_id", table, ["experiment_id"])
    set_schema_version(1)


def downgrade() -> None:
    raise NotImplementedError("icl never downgrades a catalog (an older icl refuses a newer "
                              "one: upgrade that icl instead)")
