"""The schema a migration should produce: the schema from before, with the applied migrations'
SQL replayed on it in a private scratch PostgreSQL (``initdb``, the drill machinery), dumped the
same way as the live one. The live schema after the migration must equal it: anything else
changed the schema behind the migrations' back (or the migration tool did more than its files say).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import utcnow
from contentflow_backupd.ops.drill.workspace import Workspace, cleanup_stale_drills
from contentflow_backupd.source.drivers import PgDrivers, conninfo_of
from contentflow_backupd.source.postgres import create_database
from contentflow_backupd.source.schema import dump_schema, load_sql

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 300.0
"""A scratch server not answering queries by then is given up on: the check could not run
(``migrate/validate.py``), rather than the guard waiting forever after the migration applied."""


def expected_schema(
    before: str,
    scripts: Sequence[tuple[str, str]],
    *,
    major: int,
    state_dir: Path,
    pg_bin: Path | None,
    client_bin: Path | None,
    scratch_dir: Path | None = None,
) -> str:
    """Replay ``before`` then each ``(name, migration.sql)`` in a scratch instance of PostgreSQL
    ``major``; return its normalised schema dump. ``SourceError`` names a script that fails. The
    scratch instance and its files are removed before this returns or raises."""
    pg = PgDrivers()
    cleanup_stale_drills(state_dir, scratch=pg.scratch, admin=pg.admin)
    owner = pg.scratch.owner()
    ws = Workspace.create(
        state_dir,
        f"{utcnow():%Y%m%dT%H%M%SZ}-expect-{secrets.token_hex(3)}",
        shared=not owner.is_me,
        scratch=pg.scratch,
        scratch_dir=scratch_dir,
    )
    try:
        server = ws.start_empty_server(major, pg_bin, ready_timeout=READY_TIMEOUT_S, client_bin=client_bin)
        create_database(conninfo_of(server.conninfo("postgres")), "expect")
        info = conninfo_of(server.conninfo("expect"))
        load_sql(info, before, what="loading the schema from before the migration into the scratch instance")
        for name, script in scripts:
            load_sql(info, script, what=f"replaying migration {name} on the schema from before")
        return dump_schema(info, bin_dir=client_bin, tmp_root=ws.path / "tmp")
    finally:
        if ws.server is not None:
            try:
                ws.server.stop()
            except (OSError, BackupdError) as exc:
                log.error("scratch_server_stop_failed", error=str(exc))
        ws.remove()
