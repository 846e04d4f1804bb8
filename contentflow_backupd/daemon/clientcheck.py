"""The start-up check of the PostgreSQL client tools against the server.

The container image installs the client of one major version (``PG_MAJOR``, pinned with
``BACKUPD_PG_BIN``); a server of a newer major cannot be backed up with it (``pg_dump`` and
``pg_basebackup`` refuse a newer server). The daemon says so when it starts, naming both majors,
instead of failing at the first scheduled backup hours later. A server that cannot be reached at
start is not an error here: the check is repeated by every backup (``find_tool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from contentflow_backupd.errors import ConfigError, SourceError
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.tools import find_tool, tool_major

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ClientCheck:
    tool: Path
    client_major: int | None
    server_major: int


def compare_majors(
    tool_name: str, server_major: int, pg_bin: Path | None, *, where: str = "the server"
) -> ClientCheck:
    """The tool the backups will use against a server of ``server_major``; ``ConfigError`` (exit 2)
    when it is older than the server or missing."""
    try:
        # With BACKUPD_PG_BIN the majors are compared here, for a message that names the image's
        # build argument; without it find_tool picks (and checks) the tools of the server's major.
        tool = find_tool(tool_name, None if pg_bin is not None else server_major, pg_bin)
    except SourceError as exc:
        raise ConfigError(f"{exc.message} ({where} is PostgreSQL {server_major})", hint=exc.hint) from None
    client = tool_major(tool)
    if client is not None and client < server_major:
        setting = f"BACKUPD_PG_BIN={pg_bin}" if pg_bin is not None else str(tool.parent)
        raise ConfigError(
            f"{setting} holds the PostgreSQL {client} client tools ({tool_name}), but {where} is"
            f" PostgreSQL {server_major}: {tool_name} {client} cannot back up a newer server",
            hint=(
                f"use an image built with --build-arg PG_MAJOR={server_major} (docs/deployment.md,"
                f" 'Container'), or point BACKUPD_PG_BIN at the PostgreSQL {server_major} client tools"
            ),
        )
    return ClientCheck(tool=tool, client_major=client, server_major=server_major)


def check_client_tools(info: ConnInfo, mode: str, pg_bin: Path | None) -> ClientCheck | None:
    """Connect to ``info`` once, compare the majors of the server and of the client tool the
    backups of ``mode`` use (in ``pg_bin``, else by server major); ``None`` when the server
    cannot be reached now."""
    from contentflow_backupd.source.schema import server_major

    try:
        major = server_major(info)
    except SourceError as exc:
        log.warning("pg_client_check_skipped", reason=exc.message)
        return None
    tool_name = "pg_basebackup" if mode == "physical" else "pg_dump"
    result = compare_majors(tool_name, major, pg_bin, where=f"the server at {info.display()}")
    log.info(
        "pg_client_checked",
        tool=str(result.tool),
        client_major=result.client_major,
        server_major=result.server_major,
    )
    return result
