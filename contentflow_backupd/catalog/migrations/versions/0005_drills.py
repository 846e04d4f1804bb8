"""Restore drills (``restore-test``, the daemon's ``restore_test`` job): one row per drill.

A drill restores a backup into a scratch instance, measures the recovery time (RTO: from the
drill's start to a server that answers queries), runs the checks and records them here, with
the restored size and throughput.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("backup_id", sa.String(128), nullable=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("rto_seconds", sa.Float(), nullable=True),
        sa.Column("restored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("throughput_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("checks", _JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drills")),
    )
    op.create_index("ix_drills_cluster_started_at", "drills", ["cluster", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_drills_cluster_started_at", table_name="drills")
    op.drop_table("drills")
