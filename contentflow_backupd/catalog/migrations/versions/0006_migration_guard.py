"""The migration guard: one row per ``migrate`` run (its audit record, safety net, the schema
before and after, the role settings it changed for the run) and one per ``migrate batch`` data
migration (its checkpoint, so an interrupted run resumes where it stopped).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "migration_runs",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("database", sa.String(255), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("command", _JSON, nullable=False),
        sa.Column("dry_run", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("restore_point", sa.String(255), nullable=True),
        sa.Column("backup_id", sa.String(128), nullable=True),
        sa.Column("details", _JSON, nullable=False),
        sa.Column("schema_before", sa.Text(), nullable=True),
        sa.Column("schema_after", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_runs")),
    )
    op.create_index("ix_migration_runs_cluster_started_at", "migration_runs", ["cluster", "started_at"])
    op.create_table(
        "migration_batches",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("database", sa.String(255), nullable=False),
        sa.Column("table_name", sa.String(255), nullable=False),
        sa.Column("key_column", sa.String(255), nullable=False),
        sa.Column("sql_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("details", _JSON, nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_batches")),
    )


def downgrade() -> None:
    op.drop_table("migration_batches")
    op.drop_index("ix_migration_runs_cluster_started_at", table_name="migration_runs")
    op.drop_table("migration_runs")
