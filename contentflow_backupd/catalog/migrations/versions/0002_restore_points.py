"""Named restore points (``restore-point NAME``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the column type: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "restore_points",
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("lsn", sa.String(32), nullable=False),
        sa.Column("timeline", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("cluster", "name", name=op.f("pk_restore_points")),
    )
    op.create_index("ix_restore_points_cluster_created_at", "restore_points", ["cluster", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_restore_points_cluster_created_at", table_name="restore_points")
    op.drop_table("restore_points")
