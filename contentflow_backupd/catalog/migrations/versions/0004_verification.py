"""Continuous verification (``verify --since-last``, the daemon's ``verify`` job).

``verify_state`` holds one row per cluster: when the last deep verification succeeded, which
backups it read (a JSON list), and where the rotating sweep over all repository objects stands.
``corrupt_objects`` records every object found bad (missing, wrong size, failed authentication or
hash) with the backups that need it; a record stays open until it is resolved (repaired, or no
kept backup needs the object any more).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the column type: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "verify_state",
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("last_deep_success_at", _TIMESTAMP, nullable=True),
        sa.Column("sweep_cursor", sa.Text(), nullable=True),
        sa.Column("sweep_started_at", _TIMESTAMP, nullable=True),
        sa.Column("sweep_objects_total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("verified_backups", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("cluster", name=op.f("pk_verify_state")),
    )
    op.create_table(
        "corrupt_objects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("backup_ids", sa.Text(), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("detected_at", _TIMESTAMP, nullable=False),
        sa.Column("resolved_at", _TIMESTAMP, nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrupt_objects")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_corrupt_objects_cluster_resolved_at", "corrupt_objects", ["cluster", "resolved_at"])
    # At most one open record per object.
    op.create_index(
        "uq_corrupt_objects_open",
        "corrupt_objects",
        ["cluster", "key"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_corrupt_objects_open", table_name="corrupt_objects")
    op.drop_index("ix_corrupt_objects_cluster_resolved_at", table_name="corrupt_objects")
    op.drop_table("corrupt_objects")
    op.drop_table("verify_state")
