"""Replace the contents of a live database with a logical backup, in one transaction
(``migrate rollback --to-restore-point``).

``pg_restore --clean`` would leave behind every object the backup does not know (a table a
migration created), so instead, in one ``psql --single-transaction`` session: every user schema
is dropped with what it holds, ``public`` is created again with its owner and privileges as they
were, and the backup's SQL (``pg_restore -f -``) recreates everything. An error anywhere rolls all
of it back, leaving the database as it was. Sessions that touch the schema wait for the
transaction (it holds ACCESS EXCLUSIVE locks on what it drops).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from psycopg import sql

from contentflow_backupd.errors import SourceError
from contentflow_backupd.procs import spawn
from contentflow_backupd.source.conninfo import ConnInfo, libpq_env
from contentflow_backupd.source.postgres import connect
from contentflow_backupd.source.tools import StderrTail, find_tool

_USER_SCHEMAS = (
    "select nspname from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema' "
    "and not exists (select 1 from pg_depend d where d.classid = 'pg_namespace'::regclass "
    "and d.objid = pg_namespace.oid and d.deptype = 'e') order by nspname"
)
_PUBLIC_GRANTS = (
    "select coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable "
    "from pg_namespace n cross join lateral aclexplode(n.nspacl) a "
    "left join pg_roles r on r.oid = a.grantee where n.nspname = 'public' "
    "and a.grantee <> n.nspowner"
)


def reset_sql(info: ConnInfo) -> tuple[str, int]:
    """The SQL that empties the database (schemas dropped, ``public`` recreated as it was), and
    the server's major version."""
    with connect(info) as conn:
        schemas = [r[0] for r in conn.execute(_USER_SCHEMAS).fetchall()]
        owner_row = conn.execute(
            "select pg_get_userbyid(nspowner) from pg_namespace where nspname = 'public'"
        ).fetchone()
        grants = conn.execute(_PUBLIC_GRANTS).fetchall()
        version = conn.execute("select current_setting('server_version_num')::int").fetchone()
        parts = [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(s)) for s in schemas]
        if owner_row is not None:
            parts.append(
                sql.SQL("CREATE SCHEMA public AUTHORIZATION {};").format(sql.Identifier(owner_row[0]))
            )
            for grantee, privilege, grantable in grants:
                who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
                parts.append(
                    sql.SQL("GRANT {} ON SCHEMA public TO {}{};").format(
                        sql.SQL(privilege), who, sql.SQL(" WITH GRANT OPTION" if grantable else "")
                    )
                )
        text = "\n".join(p.as_string(conn) for p in parts)
    assert version is not None
    return text + "\n", int(version[0]) // 10000


def replace_contents(info: ConnInfo, archive: Path, *, bin_dir: Path | None, tmp_root: Path | None) -> None:
    """Empty the database and restore ``archive`` (a ``pg_dump -Fc`` file) into it, all in one
    transaction. ``SourceError`` (and the database unchanged) when anything fails."""
    prefix, major = reset_sql(info)
    pg_restore = find_tool("pg_restore", major, bin_dir)
    psql = find_tool("psql", major, bin_dir)
    with libpq_env(info, tmp_root) as env:
        producer = spawn(
            [str(pg_restore), "-f", "-", str(archive)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        producer_err = StderrTail(producer)
        consumer = spawn(
            [
                str(psql),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-d",
                info.safe(),
                "-f",
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        consumer_err = StderrTail(consumer)
        assert consumer.stdin is not None and producer.stdout is not None
        try:
            consumer.stdin.write(prefix.encode())
            for block in iter(lambda: producer.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                consumer.stdin.write(block)
            produced = producer.wait()
            if produced != 0:
                consumer.kill()  # before EOF: psql's one transaction never commits
                consumer.wait()
                raise SourceError(
                    f"pg_restore could not read the backup (exit {produced}): {producer_err.text()}"
                )
            consumer.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            consumer.kill()
            producer.kill()
            consumer.wait()
            producer.wait()
            raise
        rc = consumer.wait()
    if rc != 0:
        raise SourceError(
            f"restoring into {info.display()} failed (psql exit {rc}); it ran in one transaction and "
            f"was rolled back, the database is unchanged: {consumer_err.text()}"
        )
