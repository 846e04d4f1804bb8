"""Scope: every row says which repository (the id in its ``repo.json``) and cluster it belongs to.

Adds a nullable ``repository_id`` to ``backups``, ``runs``, ``restore_points``, ``deletions``,
``verify_state``, ``corrupt_objects``, ``drills`` and ``migration_runs``, and a nullable
``cluster`` to ``runs`` (which had none), with indexes on (repository_id, cluster, ...).

Rows written before this revision keep ``repository_id`` NULL here: the revision cannot read the
repository. They are attributed later, at the first open of the catalog with a repository
(``ops/repo/scope.py``, ``adopt_old_rows``), by this rule:

1. a backup row whose manifest key is in that repository's listing of its cluster gets the
   repository's id;
2. a run, drill or ``migrate`` run that names such a backup gets its repository (and, for runs,
   its cluster);
3. every other old row stays unscoped: it is kept, but never reported as any repository's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPED = (
    "backups",
    "runs",
    "restore_points",
    "deletions",
    "verify_state",
    "corrupt_objects",
    "drills",
    "migration_runs",
)
_INDEXED = {
    "backups": ("started_at",),
    "runs": ("id",),
    "drills": ("started_at",),
    "migration_runs": ("started_at",),
    "deletions": ("id",),
}


def upgrade() -> None:
    for table in SCOPED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("repository_id", sa.String(64), nullable=True))
            if table == "runs":
                batch.add_column(sa.Column("cluster", sa.String(255), nullable=True))
    for table, extra in _INDEXED.items():
        op.create_index(f"ix_{table}_scope", table, ["repository_id", "cluster", *extra])


def downgrade() -> None:
    for table in _INDEXED:
        op.drop_index(f"ix_{table}_scope", table_name=table)
    for table in SCOPED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("repository_id")
            if table == "runs":
                batch.drop_column("cluster")
