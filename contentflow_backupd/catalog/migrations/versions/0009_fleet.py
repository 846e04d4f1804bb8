"""Fleet: the daemons sharing a catalog and one lease per cluster (issue 18, fleet step 8).

``fleet_daemons``: one row per daemon incarnation (``id`` = ``<member>/<incarnation>``), its
heartbeat and expiry on the catalog server's clock, and the clusters it has configured (name ->
settings digest). ``fleet_leases``: one row per cluster, its owner (a daemon id, NULL: free),
the epoch (raised by every claim) and the lease's expiry. ``runs.daemon_id``,
``runs.lease_epoch`` and ``backups.daemon_id`` name the daemon (and lease epoch) that started a
row, so that its successor can reap what it left running; NULL for every older row and for
manual commands.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types: a revision never imports the (changing) models.
_TIMESTAMP = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "fleet_daemons",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("member", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", _TIMESTAMP, nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("clusters", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_daemons")),
    )
    op.create_index("ix_fleet_daemons_expires_at", "fleet_daemons", ["expires_at"])
    op.create_table(
        "fleet_leases",
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", _TIMESTAMP, nullable=True),
        sa.Column("renewed_at", _TIMESTAMP, nullable=True),
        sa.Column("expires_at", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("cluster", name=op.f("pk_fleet_leases")),
    )
    op.create_index("ix_fleet_leases_owner", "fleet_leases", ["owner"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("daemon_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lease_epoch", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("daemon_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("daemon_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_epoch")
        batch.drop_column("daemon_id")
    op.drop_index("ix_fleet_leases_owner", table_name="fleet_leases")
    op.drop_table("fleet_leases")
    op.drop_index("ix_fleet_daemons_expires_at", table_name="fleet_daemons")
    op.drop_table("fleet_daemons")
