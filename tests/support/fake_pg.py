"""In-memory PostgreSQL for unit tests of drills, recover and physical restore: the protocols of
``contentflow_backupd/source/base.py`` without a server, psycopg or a subprocess.

The fakes keep the data path honest: what a drill or restore checks is what went through the
repository. A fake database's content (schema fingerprint, tables and their rows) travels as a
JSON document: in the ``pg_dump`` stream of ``FakeLogicalSource`` (``FakeRestoreTarget`` reads it
back) and as ``fake_content.json`` inside the ``pg_basebackup`` tar of ``FakePhysicalSource``
(a ``FakeScratchServer`` started on a restored data directory serves what it finds there). A
damaged chunk, a missing WAL segment or a wrong schema therefore fails the same way it would
against PostgreSQL. Files are real (``tmp_path``): ``FakePostgres.datadir`` is the real
``LocalDataDirectories``.

Knobs (attributes of ``FakePostgres``) make a step fail; ``events`` records what happened, in order.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from contentflow_backupd.errors import SourceError
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import (
    ClusterInfo,
    Database,
    DatabaseInfo,
    IndexCheck,
    LogicalSource,
    LogicalTarget,
    Owner,
    PhysicalSource,
    PostgresDrivers,
    ReceiverExit,
    SchemaFingerprint,
    ServerState,
    TableRead,
    ToolVerdict,
    WalReceiver,
)
from contentflow_backupd.source.drivers import LocalDataDirectories
from contentflow_backupd.wal import Segment, classify, parse_segment

CONTENT_FILE = "fake_content.json"
SEGMENT_SIZE = 1 << 20  # the smallest size PostgreSQL allows: keeps the fake WAL small
SYSTEM_ID = 7_000_000_000_000_000_001
VERSION_NUM = 160004


@dataclass
class Content:
    """What a database holds, as far as the checks can see."""

    schema: str = "schema-v1"
    tables: dict[str, int] = field(default_factory=lambda: {"public.users": 3, "public.posts": 7})
    unreadable: dict[str, str] = field(default_factory=dict)
    """Tables that fail to read: name -> error."""
    corrupt_indexes: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "tables": self.tables,
            "unreadable": self.unreadable,
            "corrupt_indexes": self.corrupt_indexes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Content:
        return cls(
            schema=raw["schema"],
            tables=dict(raw["tables"]),
            unreadable=dict(raw.get("unreadable", {})),
            corrupt_indexes=[(str(a), str(b)) for a, b in raw.get("corrupt_indexes", [])],
        )

    def fingerprint(self) -> SchemaFingerprint:
        return SchemaFingerprint(self.schema, {"": "ext", **{t: self.schema[:8] for t in self.tables}})


# -- databases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeDatabase:
    """``Database``: a database on a fake server."""

    server: str
    name: str | None = None

    @property
    def dbname(self) -> str | None:
        return self.name

    def display(self) -> str:
        return f"{self.server}/{self.name or '-'}"

    def with_database(self, dbname: str) -> FakeDatabase:
        return FakeDatabase(self.server, dbname)


@dataclass
class Served:
    """A database a fake server answers for."""

    content: Content
    state: ServerState


def _state(**over: Any) -> ServerState:
    values: dict[str, Any] = {
        "in_recovery": False,
        "replay_lsn": None,
        "last_replayed_commit": None,
        "timeline": 1,
        "server_version_num": VERSION_NUM,
    }
    values.update(over)
    return ServerState(**values)


class FakeDatabaseFacts:
    """``DatabaseFacts`` over the databases the fake servers answer for."""

    def __init__(self, pg: FakePostgres) -> None:
        self.pg = pg

    def _served(self, db: Database) -> Served:
        served = self.pg.served.get(db.display())
        if served is None:
            raise SourceError(f"cannot connect to {db.display()}: no such fake database")
        return served

    def server_state(self, db: Database) -> ServerState:
        return self._served(db).state

    def schema_fingerprint(self, db: Database) -> SchemaFingerprint:
        return self._served(db).content.fingerprint()

    def read_tables(self, db: Database) -> list[TableRead]:
        content = self._served(db).content
        reads = [TableRead(name, rows, rows * 100) for name, rows in sorted(content.tables.items())]
        return [
            TableRead(r.name, error=content.unreadable[r.name]) if r.name in content.unreadable else r
            for r in reads
        ]

    def check_btree_indexes(self, db: Database, *, create_extension: bool) -> IndexCheck:
        content = self._served(db).content
        if not create_extension:
            return IndexCheck(False, "amcheck is not installed")
        return IndexCheck(True, checked=len(content.tables), failures=list(content.corrupt_indexes))

    def run_boolean_query(self, db: Database, query: str) -> tuple[bool, str]:
        """Understands ``select count(*) = N from T`` (and ``select true``/``select false``)."""
        content = self._served(db).content
        q = " ".join(query.lower().split())
        if q in ("select true", "select false"):
            return q == "select true", q.split()[1]
        m = re.fullmatch(r"select count\(\*\) = (\d+) from (\S+)", q)
        if m is None:
            raise SourceError(f"the fake does not understand {query!r}")
        rows = content.tables.get(m.group(2))
        if rows is None:
            raise SourceError(f'relation "{m.group(2)}" does not exist')
        return rows == int(m.group(1)), str(rows == int(m.group(1))).lower()


class FakeRestoreTarget:
    """``LogicalTarget``: reads the dump (the JSON ``Content`` written by ``FakeLogicalSource``)
    and makes the database answer with it."""

    def __init__(self, pg: FakePostgres, db: Database) -> None:
        self.pg = pg
        self.db = db
        self.created = False

    def describe(self) -> str:
        return self.db.display()

    def prepare(self, *, create: bool, clean: bool, dump_major: int | None = None) -> bool:
        self.pg.events.append(f"prepare {self.db.display()}")
        self.created = create
        return create

    def drop_created(self) -> None:
        self.pg.served.pop(self.db.display(), None)
        self.pg.events.append(f"drop_created {self.db.display()}")

    def drop_hint(self) -> str:
        return f"drop {self.db.display()}"

    def restore(self, archive: Iterable[bytes], *, clean: bool, jobs: int, no_owner: bool) -> None:
        if self.pg.restore_fails is not None:
            raise SourceError(self.pg.restore_fails)
        data = b"".join(archive)
        content = Content.from_json(json.loads(data.rstrip(b" ")))
        self.pg.served[self.db.display()] = Served(content, _state())
        self.pg.events.append(f"restored {self.db.display()}")


class FakeDatabaseAdmin:
    def __init__(self, pg: FakePostgres) -> None:
        self.pg = pg

    def drop_database(self, server: Database, name: str) -> None:
        if self.pg.drop_fails is not None:
            raise SourceError(self.pg.drop_fails)
        self.pg.served.pop(server.with_database(name).display(), None)
        self.pg.events.append(f"drop {server.with_database(name).display()}")

    def restore_target(
        self, db: Database, *, bin_dir: Path | None, tmp_root: Path | None
    ) -> FakeRestoreTarget:
        return FakeRestoreTarget(self.pg, db)

    def cancel_queries(self, owner: str | None = None) -> int:
        self.pg.events.append("cancel queries" if owner is None else f"cancel queries of {owner}")
        return 0


# -- scratch servers -------------------------------------------------------------------------------
_SETTING = re.compile(r"^\s*(\w+)\s*=\s*'([^']*)'")


class FakeScratchServer:
    """``ScratchServer``: a server that 'runs' on a data directory. On a restored one it serves
    the ``fake_content.json`` found there, and ends recovery at its ``recovery_target_lsn``."""

    count = 0

    def __init__(self, pg: FakePostgres, pgdata: Path, run_dir: Path, superuser: str) -> None:
        FakeScratchServer.count += 1
        self.pg = pg
        self.pgdata = pgdata
        self.run_dir = run_dir
        self.superuser = superuser
        self.name = f"scratch{FakeScratchServer.count}"
        self.started = False

    def make_run_dir(self) -> None:
        self.run_dir.mkdir(mode=0o700)

    def initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700)
        (self.pgdata / CONTENT_FILE).write_text(json.dumps(Content(schema="empty", tables={}).to_json()))
        self.pg.events.append(f"initdb {self.name}")

    def configure(self) -> None:
        self.pg.events.append(f"configure {self.name}")

    def start(self) -> None:
        self.started = True
        self.pg.running.add(self.name)
        self.pg.events.append(f"start {self.name}")
        if self.pg.start_fails is not None:
            raise SourceError(f"the scratch PostgreSQL did not start: {self.pg.start_fails}")

    def wait_ready(
        self,
        dbname: str,
        *,
        promoted: bool,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ServerState:
        if cancelled is not None and cancelled():
            raise SourceError("the restore drill was stopped (shutdown) before the server was ready")
        try:
            content = Content.from_json(json.loads((self.pgdata / CONTENT_FILE).read_text()))
        except (OSError, ValueError) as exc:
            raise SourceError(f"the scratch PostgreSQL stopped before it was ready: {exc}") from None
        settings = self._recovery_settings()
        restored = (self.pgdata / "backup_label").exists()
        lsn = settings.get("recovery_target_lsn") or (self.pg.replayed_to if restored else None)
        state = _state(
            in_recovery=self.pg.stays_in_recovery,
            replay_lsn=lsn,
            timeline=2 if restored else 1,
        )
        for name in {dbname, "postgres"}:
            self.pg.served[self.conninfo(name).display()] = Served(content, state)
        self.pg.events.append(f"ready {self.name}")
        return state

    def _recovery_settings(self) -> dict[str, str]:
        auto = self.pgdata / "postgresql.auto.conf"
        if not auto.exists():
            return {}
        found = (_SETTING.match(line) for line in auto.read_text().splitlines())
        return {m.group(1): m.group(2) for m in found if m}

    def conninfo(self, dbname: str) -> FakeDatabase:
        return FakeDatabase(self.name, dbname)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self.pg.running.discard(self.name)
        for key in [k for k in self.pg.served if k.startswith(self.name + "/")]:
            del self.pg.served[key]
        self.pg.events.append(f"stop {self.name}")


class FakeScratchServers:
    def __init__(self, pg: FakePostgres) -> None:
        self.pg = pg

    def owner(self) -> Owner:
        return Owner(os.geteuid(), os.getegid(), "me")

    def check_reachable(self, path: Path, owner: Owner) -> None:
        pass

    def bin_dir(self, major: int, pg_bin: Path | None, client_bin: Path | None) -> Path:
        if self.pg.no_server_binaries:
            raise SourceError(f"the PostgreSQL {major} server (postgres, pg_ctl) was not found")
        return Path(f"/fake/postgresql/{major}/bin")

    def server(
        self, pgdata: Path, run_dir: Path, bin_dir: Path, owner: Owner, *, superuser: str
    ) -> FakeScratchServer:
        return FakeScratchServer(self.pg, pgdata, run_dir, superuser)

    def stop_leftover(self, pgdata: Path, bin_dir: Path | None) -> bool:
        self.pg.events.append(f"stop_leftover {pgdata.name}")
        return False

    def verify_backup(
        self, pgdata: Path, bin_dir: Path, client_bin: Path | None, major: int
    ) -> tuple[ToolVerdict, str]:
        if not (pgdata / "backup_manifest").exists():
            return "skipped", "the backup holds no backup_manifest"
        return self.pg.verify_verdict


class FakeCombiner:
    """``BackupCombiner``: 'combines' by copying the newest input (the fake's tar holds all files)."""

    def __init__(self, pg: FakePostgres) -> None:
        self.pg = pg

    def find(self, major: int, bin_dir: Path | None) -> Path:
        return Path(f"/fake/postgresql/{major}/bin/pg_combinebackup")

    def combine(self, tool: Path, inputs: Sequence[Path], output: Path, *, link: bool) -> None:
        import shutil

        shutil.copytree(inputs[-1], output, dirs_exist_ok=True)
        self.pg.events.append(f"combine {len(inputs)}")


class FakePostgres:
    """``PostgresDrivers`` without PostgreSQL. Knobs: ``start_fails`` (the scratch server does not
    start: its message), ``restore_fails`` (pg_restore fails), ``drop_fails``, ``verify_verdict``
    (what pg_verifybackup says), ``no_server_binaries``, ``stays_in_recovery``, ``replayed_to``
    (where recovery ends without a target LSN)."""

    def __init__(self) -> None:
        self.served: dict[str, Served] = {}
        self.running: set[str] = set()
        self.events: list[str] = []
        self.start_fails: str | None = None
        self.restore_fails: str | None = None
        self.drop_fails: str | None = None
        self.verify_verdict: tuple[ToolVerdict, str] = ("passed", "backup successfully verified")
        self.no_server_binaries = False
        self.stays_in_recovery = False
        self.replayed_to: str | None = None
        self.facts = FakeDatabaseFacts(self)
        self.admin = FakeDatabaseAdmin(self)
        self.scratch = FakeScratchServers(self)
        self.datadir = LocalDataDirectories()
        self.combiner = FakeCombiner(self)

    def serve(self, db: FakeDatabase, content: Content) -> None:
        """A database that exists before the test (e.g. a drill server's maintenance database)."""
        self.served[db.display()] = Served(content, _state())


# -- sources for backups ---------------------------------------------------------------------------
class FakeLogicalSource:
    """``LogicalSource``: its dump is ``content`` as JSON (padded, so it spans several chunks)."""

    def __init__(self, content: Content, *, database: str = "app", pad: int = 200_000) -> None:
        self.content = content
        self.database = database
        self.pad = pad

    def describe(self) -> DatabaseInfo:
        return DatabaseInfo(self.database, "backupd", VERSION_NUM, "16.4", True)

    @contextmanager
    def dump(self) -> Iterator[BinaryIO]:
        data = json.dumps(self.content.to_json()).encode() + b" " * self.pad
        yield io.BytesIO(data)

    def dump_facts(self) -> dict[str, Any]:
        return {
            **self.content.fingerprint().to_details(),
            "row_counts": dict(self.content.tables),
        }


def wal_segment(timeline: int, segno: int, *, fill: int = 0) -> bytes:
    """A WAL segment of ``SEGMENT_SIZE`` with a valid long page header (the rest is ``fill``)."""
    header = struct.pack(
        "<HHIQIIQII", 0xD116, 0x0002, timeline, segno * SEGMENT_SIZE, 0, 0, SYSTEM_ID, SEGMENT_SIZE, 8192
    )
    return header + bytes([fill]) * (SEGMENT_SIZE - len(header))


@dataclass
class _BaseBackup:
    stream: Any
    start_lsn: int
    stop_lsn: int
    timeline: int
    manifest_raw: bytes


class FakePhysicalSource:
    """``PhysicalSource``: a base backup is a tar of a tiny data directory holding
    ``fake_content.json``; the WAL from its start to its stop (and ``wal_after`` segments more,
    as a busy server would archive them) is pushed to ``archive`` as it ends."""

    def __init__(self, content: Content, archive: WalArchive, *, wal_after: int = 2) -> None:
        self.content = content
        self.archive = archive
        self.wal_after = wal_after
        self.segno = 2  # where the next backup starts

    def describe(self) -> ClusterInfo:
        return ClusterInfo(
            database="app",
            user="backupd",
            server_version_num=VERSION_NUM,
            server_version="16.4",
            system_identifier=str(SYSTEM_ID),
            wal_segment_size=SEGMENT_SIZE,
            timeline=1,
            extra_tablespaces=[],
            can_replicate=True,
            is_superuser=True,
            archive_mode="on",
            archive_command="contentflow-backupd wal-push %p",
        )

    def _tar(self, label: str) -> bytes:
        files = {
            "backup_label": f"START WAL LOCATION: {label}\n".encode(),
            "PG_VERSION": b"16\n",
            "postgresql.conf": b"# fake\n",
            "global/pg_control": b"\0" * 8192,
            # incompressible and larger than 2 chunks' maximum (4 x 64 KiB average in the unit
            # tests): the stream always spans several chunks, so a test can interrupt it midway
            "base/1/1259": os.urandom(600 * 1024),
            CONTENT_FILE: json.dumps(self.content.to_json()).encode(),
            "backup_manifest": b'{"PostgreSQL-Backup-Manifest-Version": 1}\n',
        }
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory in ("global", "base", "base/1"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    @contextmanager
    def basebackup(
        self,
        label: str,
        *,
        archive_timeout: float,
        server_major: int,
        incremental_from: bytes | None = None,
    ) -> Iterator[_BaseBackup]:
        start = self.segno * SEGMENT_SIZE + 0x28
        stop = start + SEGMENT_SIZE // 2
        bb = _BaseBackup(io.BytesIO(self._tar(label)), start, stop, 1, b'{"Files": []}')
        yield bb
        last = stop // SEGMENT_SIZE
        for segno in range(self.segno, last + 1 + self.wal_after):
            self.archive.push(Segment(1, segno).name(SEGMENT_SIZE), wal_segment(1, segno, fill=segno % 251))
        self.segno = last + 1 + self.wal_after

    def native_incremental_blocker(self, since_lsn: int, timeline: int) -> str | None:
        return "the fake server takes no native incrementals"

    def switch_wal(self) -> None:
        pass

    def schema_facts(self) -> dict[str, Any]:
        return {
            **self.content.fingerprint().to_details(),
            "row_estimates": dict(self.content.tables),
            "bootstrap_superuser": "postgres",
        }


class FakeWalReceiver:
    """``WalReceiver``: a scripted ``pg_receivewal``. Each ``start`` runs the next ``runs`` entry:
    the segment numbers it completes into the spool (a ``.partial`` of the one after is left
    behind, as pg_receivewal does), then it exits with ``returncode`` (None: it keeps running
    until stopped). A start with no entry left raises ``SourceError`` (server unreachable).

    ``resumed_at`` records, per start, the segment number pg_receivewal would resume at: after
    the newest complete segment in the spool, at a newer ``.partial`` one, None for an empty spool
    (the server's current position). ``guard`` is the slot's position (bytes; None: no slot yet),
    which only ``confirm_archived`` moves, and never back; ``confirmed`` lists every call's
    argument. ``fail_confirm`` makes ``confirm_archived`` raise ``SourceError``."""

    def __init__(self, spool_dir: Path, runs: list[tuple[list[int], int | None]]) -> None:
        self._spool = spool_dir
        self.runs = list(runs)
        self.starts = 0
        self.stops = 0
        self.entered = False
        self._exit: int | None = None
        self._running = False
        self.resumed_at: list[int | None] = []
        self.guard: int | None = None
        self.confirmed: list[int] = []
        self.fail_confirm = False

    @property
    def spool_dir(self) -> Path:
        return self._spool

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> FakeWalReceiver:
        self.entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        self.entered = False

    def describe(self) -> str:
        return "fake-server/postgres"

    def start(self) -> int:
        assert self.entered, "started outside its block"
        self.starts += 1
        if not self.runs:
            raise SourceError("could not connect to the fake server")
        segments, self._exit = self.runs.pop(0)
        self.resumed_at.append(self._resume_point())
        if self.guard is None:
            self.guard = 0
        for segno in segments:
            name = Segment(1, segno).name(SEGMENT_SIZE)
            (self._spool / f"{name}.partial").unlink(missing_ok=True)
            (self._spool / name).write_bytes(wal_segment(1, segno, fill=segno % 251))
        if segments:
            after = Segment(1, segments[-1] + 1).name(SEGMENT_SIZE)
            (self._spool / f"{after}.partial").write_bytes(b"half a segment")
        self._running = True
        return 4242

    def _resume_point(self) -> int | None:
        best: int | None = None
        for path in self._spool.iterdir():
            kind = classify(path.name)
            if kind not in ("segment", "partial"):
                continue
            number = parse_segment(path.name[:24], SEGMENT_SIZE).number
            resume = number + 1 if kind == "segment" else number
            best = resume if best is None else max(best, resume)
        return best

    def confirm_archived(self, lsn: int) -> int | None:
        self.confirmed.append(lsn)
        if self.fail_confirm:
            raise SourceError("could not connect to the fake server")
        self.guard = max(self.guard or 0, lsn)
        return self.guard

    def poll(self) -> ReceiverExit | None:
        if self._running and self._exit is not None:
            self._running = False
            return ReceiverExit(self._exit, "pg_receivewal: error: connection lost", 0.1)
        return None

    def stop(self) -> ReceiverExit | None:
        if not self._running:
            return None
        self._running = False
        self.stops += 1
        return ReceiverExit(0, "", 0.1)


def _conforms(pg: FakePostgres, physical: FakePhysicalSource, logical: FakeLogicalSource) -> None:
    """Checked by mypy: the fakes implement the protocols they stand in for."""
    _: PostgresDrivers = pg
    _p: PhysicalSource = physical
    _l: LogicalSource = logical
    _t: LogicalTarget = FakeRestoreTarget(pg, FakeDatabase("x"))
    _w: WalReceiver = FakeWalReceiver(Path("spool"), [])
