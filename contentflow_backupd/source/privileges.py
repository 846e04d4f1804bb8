"""What the configured role may do on the server, for ``check``: psycopg queries, no changes.

``role_privileges(info, mode)`` connects as the configured role and returns one ``Privilege``
per thing the mode needs (see ``docs/security.md``, "Least privilege"):

- always: the connection itself; a warning (not required) when the role is a superuser, and when
  the connection to a remote host is not encrypted;
- ``logical`` (``pg_dump``): ``pg_read_all_data`` membership, else SELECT on every table and
  sequence and USAGE on every schema (the ones missing are named); tables with row-level
  security need the role to own them or ``BYPASSRLS``;
- ``physical`` (``pg_basebackup``, ``pg_receivewal``): the ``REPLICATION`` attribute and a
  replication connection that ``pg_hba.conf`` accepts; EXECUTE on ``pg_switch_wal`` and
  ``pg_create_restore_point``; EXECUTE on ``pg_backup_start``/``pg_backup_stop`` is reported but
  not required (``pg_basebackup`` uses the replication protocol).

Each missing privilege carries the statement that grants it (``fix``), run by a superuser.
A server that cannot be reached gives a single failed ``connection`` item; this never raises
for a refused privilege.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source import postgres
from contentflow_backupd.source.conninfo import ConnInfo

_LISTED = 5
"""How many missing objects a detail names before it says "and N more"."""

_USER_SCHEMAS = (
    "n.nspname not in ('pg_catalog', 'information_schema')"
    " and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'"
)


@dataclass(frozen=True)
class Privilege:
    """One thing the role can or cannot do. ``required``: a missing one makes ``check`` fail;
    otherwise it is a warning. ``fix``: the statement (or step) that grants it."""

    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str | None = None


@dataclass(frozen=True)
class _Role:
    name: str
    quoted: str
    """The name as an SQL identifier (``quote_ident``), for the GRANT statements."""
    superuser: bool
    replication: bool
    bypassrls: bool
    server_version_num: int
    ssl: bool


def role_privileges(info: ConnInfo, mode: str) -> list[Privilege]:
    """The privileges ``mode`` (``logical`` or ``physical``) needs, checked as ``info``'s role."""
    try:
        conn = postgres.connect(info)
    except SourceError as exc:
        return [Privilege("connection", False, exc.message, fix=exc.hint)]
    with conn:
        try:
            role = _role(conn)
            items = [_connection(info, role), _superuser(role)]
            if mode == "physical":
                items += _physical(conn, info, role)
            else:
                items += _logical(conn, role)
        except psycopg.Error as exc:
            reason = postgres.error_reason(exc)
            return [Privilege("connection", False, f"cannot read the role's privileges: {reason}")]
    return items


def _role(conn: psycopg.Connection[Any]) -> _Role:
    row = conn.execute(
        "select r.rolname, quote_ident(r.rolname), r.rolsuper, r.rolreplication, r.rolbypassrls,"
        " current_setting('server_version_num')::int,"
        " coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)"
        " from pg_roles r where r.rolname = current_user"
    ).fetchone()
    assert row is not None
    return _Role(
        str(row[0]), str(row[1]), bool(row[2]), bool(row[3]), bool(row[4]), int(row[5]), bool(row[6])
    )


def _connection(info: ConnInfo, role: _Role) -> Privilege:
    host = info.params.get("host", "")
    local = not host or host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")
    where = f"connected to {info.display()} as {role.name}"
    if role.ssl:
        return Privilege("connection", True, f"{where} over TLS")
    if local:
        return Privilege("connection", True, f"{where} (local, without TLS)")
    return Privilege(
        "connection",
        False,
        f"{where} without TLS: the password and the data cross the network in clear",
        required=False,
        fix="add sslmode=verify-full (and sslrootcert=...) to BACKUPD_DATABASE_URL",
    )


def _superuser(role: _Role) -> Privilege:
    if not role.superuser:
        return Privilege("not superuser", True, f"{role.name} is not a superuser")
    return Privilege(
        "not superuser",
        False,
        f"{role.name} is a superuser: far more than backups need",
        required=False,
        fix="use a dedicated backup role with only the grants of docs/security.md (Least privilege)",
    )


def _logical(conn: psycopg.Connection[Any], role: _Role) -> list[Privilege]:
    items: list[Privilege] = []
    member = role.superuser or (
        role.server_version_num >= 140000
        and bool(_one(conn, "select pg_has_role(current_user, 'pg_read_all_data', 'usage')"))
    )
    grant_all = f"GRANT pg_read_all_data TO {role.quoted};"
    if member:
        how = "superuser" if role.superuser else "member of pg_read_all_data"
        items.append(Privilege("read all tables", True, f"{role.name} is {how}"))
    else:
        items.append(_readable(conn, role, grant_all))
    rls = [
        str(r[0])
        for r in conn.execute(
            "select format('%I.%I', n.nspname, c.relname) from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where c.relkind in ('r', 'p') and c.relrowsecurity"
            f" and {_USER_SCHEMAS} and not pg_has_role(c.relowner, 'usage') order by 1"
        ).fetchall()
    ]
    if rls and not (role.superuser or role.bypassrls):
        items.append(
            Privilege(
                "row-level security",
                False,
                f"row-level security hides rows of {_names(rls)} from {role.name}: pg_dump refuses",
                fix=f"ALTER ROLE {role.quoted} BYPASSRLS;",
            )
        )
    else:
        items.append(Privilege("row-level security", True, "no table hides rows from this role"))
    return items


def _readable(conn: psycopg.Connection[Any], role: _Role, grant_all: str) -> Privilege:
    schemas = [
        str(r[0])
        for r in conn.execute(
            f"select quote_ident(n.nspname) from pg_namespace n where {_USER_SCHEMAS}"
            " and not has_schema_privilege(n.oid, 'usage') order by 1"
        ).fetchall()
    ]
    relations = conn.execute(
        "select quote_ident(n.nspname), format('%I.%I', n.nspname, c.relname) from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        f" where c.relkind in ('r', 'p', 'm', 'S') and {_USER_SCHEMAS}"
        " and not has_table_privilege(c.oid, 'select') order by 2"
    ).fetchall()
    missing = [f"schema {s}" for s in schemas] + [str(r[1]) for r in relations]
    if not missing:
        return Privilege(
            "read all tables", True, f"{role.name} may read every table and sequence (by ownership or SELECT)"
        )
    if role.server_version_num >= 140000:
        fix = grant_all
    else:
        targets = sorted(set(schemas) | {str(r[0]) for r in relations})
        fix = " ".join(
            f"GRANT USAGE ON SCHEMA {s} TO {role.quoted};"
            f" GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {role.quoted};"
            f" GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {role.quoted};"
            for s in targets
        )
    return Privilege(
        "read all tables",
        False,
        f"{role.name} is not a member of pg_read_all_data and may not read {_names(missing)}",
        fix=fix,
    )


def _physical(conn: psycopg.Connection[Any], info: ConnInfo, role: _Role) -> list[Privilege]:
    items: list[Privilege] = []
    if role.replication or role.superuser:
        items.append(Privilege("replication", True, f"{role.name} has the REPLICATION attribute"))
        items.append(_replication_connection(info, role))
    else:
        items.append(
            Privilege(
                "replication",
                False,
                f"{role.name} lacks the REPLICATION attribute: pg_basebackup and pg_receivewal refuse",
                fix=f"ALTER ROLE {role.quoted} REPLICATION;",
            )
        )
    wanted = [("pg_switch_wal()", True), ("pg_create_restore_point(text)", True)]
    if role.server_version_num >= 150000:
        wanted += [("pg_backup_start(text, boolean)", False), ("pg_backup_stop(boolean)", False)]
    else:
        wanted += [
            ("pg_start_backup(text, boolean, boolean)", False),
            ("pg_stop_backup(boolean, boolean)", False),
        ]
    for signature, required in wanted:
        allowed = role.superuser or bool(
            _one(conn, "select has_function_privilege(%s, 'execute')", (signature,))
        )
        name = signature.split("(")[0]
        use = "used by physical backups and restore points" if required else "not needed by pg_basebackup"
        items.append(
            Privilege(
                f"execute {name}",
                allowed,
                f"{role.name} {'may' if allowed else 'may not'} execute {signature} ({use})",
                required=required,
                fix=None if allowed else f"GRANT EXECUTE ON FUNCTION {signature} TO {role.quoted};",
            )
        )
    items.append(_native_incremental(conn, role))
    return items


NATIVE_INCREMENTAL = "native incremental backups"


def _native_incremental(conn: psycopg.Connection[Any], role: _Role) -> Privilege:
    """Whether incrementals can be native (``pg_basebackup --incremental``): a warning when not,
    since they then are whole backups deduplicated against their generation."""
    major = role.server_version_num // 10000
    if major < 17:
        return Privilege(
            NATIVE_INCREMENTAL,
            False,
            f"the server is PostgreSQL {major}: incrementals are whole backups deduplicated by chunk; "
            "native incrementals (only the changed blocks read and sent) need PostgreSQL 17 or newer",
            required=False,
            fix="upgrade the server to PostgreSQL 17 or newer",
        )
    summarize = _one(conn, "select current_setting('summarize_wal')", ())
    if summarize != "on":
        return Privilege(
            NATIVE_INCREMENTAL,
            False,
            "summarize_wal is off: incrementals are whole backups deduplicated by chunk, not native "
            "(only the changed blocks read and sent); the first incremental after turning it on is "
            "may still be a chunk one, the next ones are native",
            required=False,
            fix="ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();",
        )
    return Privilege(
        NATIVE_INCREMENTAL,
        True,
        f"PostgreSQL {major} with summarize_wal = on: incrementals are native (pg_basebackup "
        "--incremental); restoring them needs pg_combinebackup of the same major",
        required=False,
    )


def _replication_connection(info: ConnInfo, role: _Role) -> Privilege:
    try:
        with postgres.open_connection(info, autocommit=False, replication="true") as conn:
            result = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise psycopg.OperationalError((result.error_message or b"").decode(errors="replace"))
    except psycopg.Error as exc:
        reason = postgres.scrubbed_reason(exc, info)
        return Privilege(
            "replication connection",
            False,
            f"the server refuses a replication connection for {role.name}: {reason}",
            fix=f"allow it in pg_hba.conf: host replication {role.name} <client address> scram-sha-256",
        )
    return Privilege("replication connection", True, "pg_hba.conf accepts a replication connection")


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
