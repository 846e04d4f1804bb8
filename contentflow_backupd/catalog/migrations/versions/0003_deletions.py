"""Retention deletions (``expire``, the daemon's ``retention`` job): an append-only record.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the column type: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _TIMESTAMP, nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("what", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletions")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deletions_cluster_at", "deletions", ["cluster", "at"])


def downgrade() -> None:
    op.drop_index("ix_deletions_cluster_at", table_name="deletions")
    op.drop_table("deletions")
