"""A stand-in for ``prisma migrate deploy`` (Prisma's engines cannot be downloaded here).

It is a test double for the external tool only: it behaves like ``migrate deploy`` on a real
PostgreSQL database, so the migration guard around it runs for real.

``python -m tests.support.fake_prisma migrate deploy --migrations-dir DIR`` with ``DATABASE_URL``
in the environment:

- like Prisma's own driver it reads neither ``PGOPTIONS`` nor an ``options`` parameter of the URL
  (both are dropped before connecting), so settings meant for the migration's sessions must reach
  it another way;
- takes Prisma's advisory lock (72707369) for the whole run;
- creates ``_prisma_migrations`` with Prisma's columns when missing;
- refuses (exit 1, Prisma's P3009) when a failed migration is recorded;
- applies each pending migration (no row with ``finished_at`` set and ``rolled_back_at`` unset) in
  folder-name order: inserts its row, runs ``migration.sql`` in one transaction, then sets
  ``finished_at`` and ``applied_steps_count``; on an SQL error it records the error in ``logs``
  and exits 1 (P3018), leaving earlier migrations applied;
- the checksum is Prisma's: the SHA-256 of ``migration.sql``, lower-case hex.

``--sleep-before NAME=SECONDS`` makes it wait before applying NAME (tests use it to watch progress).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

PRISMA_LOCK = 72707369

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)
"""


def _strip_options(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "options"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def deploy(migrations_dir: Path, url: str, sleeps: dict[str, float]) -> int:
    names = sorted(p.name for p in migrations_dir.iterdir() if p.is_dir() and (p / "migration.sql").is_file())
    with psycopg.connect(_strip_options(url), autocommit=True, application_name="prisma-migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (PRISMA_LOCK,))
        try:
            conn.execute(CREATE_TABLE)
            failed = conn.execute(
                'SELECT migration_name FROM "_prisma_migrations" '
                "WHERE finished_at IS NULL AND rolled_back_at IS NULL ORDER BY started_at"
            ).fetchall()
            if failed:
                print(
                    "Error: P3009\n\nmigrate found failed migrations in the target database, new migrations "
                    f"will not be applied.\nThe `{failed[0][0]}` migration failed",
                    file=sys.stderr,
                )
                return 1
            applied = {
                r[0]
                for r in conn.execute(
                    'SELECT migration_name FROM "_prisma_migrations" '
                    "WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL"
                ).fetchall()
            }
            pending = [n for n in names if n not in applied]
            print(f"{len(names)} migrations found in prisma/migrations")
            if not pending:
                print("No pending migrations to apply.")
                return 0
            print(f"Applying {len(pending)} migration(s)")
            for name in pending:
                if name in sleeps:
                    time.sleep(sleeps[name])
                script = (migrations_dir / name / "migration.sql").read_bytes()
                row_id = str(uuid.uuid4())
                conn.execute(
                    'INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at, '
                    "applied_steps_count) VALUES (%s, %s, %s, clock_timestamp(), 0)",
                    (row_id, hashlib.sha256(script).hexdigest(), name),
                )
                print(f"Applying migration `{name}`", flush=True)
                try:
                    with conn.transaction():
                        conn.execute(script.decode())  # type: ignore[call-overload]
                except psycopg.Error as exc:
                    logs = f"Database error:\n{exc}"
                    conn.execute('UPDATE "_prisma_migrations" SET logs = %s WHERE id = %s', (logs, row_id))
                    print(
                        f"Error: P3018\n\nA migration failed to apply. New migrations cannot be applied "
                        f"before the error is recovered from.\n\nMigration name: {name}\n\n{logs}",
                        file=sys.stderr,
                    )
                    return 1
                conn.execute(
                    'UPDATE "_prisma_migrations" SET finished_at = clock_timestamp(), '
                    "applied_steps_count = 1 WHERE id = %s",
                    (row_id,),
                )
            print("All migrations have been successfully applied.")
            return 0
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (PRISMA_LOCK,))


def main(argv: list[str] | None = None) -> int:
    os.environ.pop("PGOPTIONS", None)  # Prisma's driver does not read it
    p = argparse.ArgumentParser(prog="fake-prisma")
    p.add_argument("command", choices=["migrate"])
    p.add_argument("subcommand", choices=["deploy"])
    p.add_argument("--migrations-dir", type=Path, required=True)
    p.add_argument("--sleep-before", action="append", default=[], metavar="NAME=SECONDS")
    args = p.parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        print("Error: Environment variable not found: DATABASE_URL.", file=sys.stderr)
        return 1
    sleeps = {k: float(v) for k, _, v in (s.partition("=") for s in args.sleep_before)}
    try:
        return deploy(args.migrations_dir, url, sleeps)
    except psycopg.Error as exc:
        print(f"Error: P1001\n\n{exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
