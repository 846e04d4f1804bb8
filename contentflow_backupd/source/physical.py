"""Physical backups: ``pg_basebackup`` tar to stdout, streamed, with its label and manifest
picked out of the stream on the way, and a watchdog for WAL that never gets archived."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog

from contentflow_backupd.errors import SourceError
from contentflow_backupd.procs import spawn, stop_process
from contentflow_backupd.source import facts, postgres
from contentflow_backupd.source.base import ClusterInfo
from contentflow_backupd.source.conninfo import ConnInfo, libpq_env
from contentflow_backupd.source.tools import StderrTail, find_tool, widen_pipe
from contentflow_backupd.wal import format_lsn, parse_lsn

log = structlog.get_logger(__name__)

_WAITING_FOR_ARCHIVE = "waiting for wal archiving to finish"
_WATCH_INTERVAL = 0.2
"""How often the watchdog reads pg_basebackup's phase (one query on an open connection)."""
_NUDGE = "select txid_current()"
"""A commit record with no WAL before it: committed asynchronously, so the WAL writer flushes it
within ``wal_writer_delay`` (200 ms by default), and that flush sets the latch of every WAL
sender (up to 15). It never waits for a synchronous standby, and the watchdog's session sets
``synchronous_commit = local`` besides, in case that ever changes."""
_NUDGE_INTERVAL = 0.05
_NUDGE_BEFORE = 160000
"""server_version_num from which a WAL flush no longer wakes a base backup's WAL sender."""


def describe_cluster(info: ConnInfo) -> ClusterInfo:
    with postgres.connect(info) as conn:
        row = conn.execute(
            "select current_database(), current_user, current_setting('server_version_num')::int,"
            " current_setting('server_version'),"
            " (select system_identifier::text from pg_control_system()),"
            " pg_size_bytes(current_setting('wal_segment_size')),"
            " (select timeline_id from pg_control_checkpoint()),"
            " (select coalesce(array_agg(spcname::text), '{}') from pg_tablespace"
            "   where spcname not in ('pg_default', 'pg_global')),"
            " (select rolreplication or rolsuper from pg_roles where rolname = current_user),"
            " (select rolsuper from pg_roles where rolname = current_user),"
            " current_setting('archive_mode'), current_setting('archive_command')"
        ).fetchone()
    assert row is not None
    return ClusterInfo(
        database=row[0], user=row[1], server_version_num=row[2], server_version=row[3],
        system_identifier=row[4], wal_segment_size=int(row[5]), timeline=int(row[6]),
        extra_tablespaces=list(row[7]), can_replicate=bool(row[8]), is_superuser=bool(row[9]),
        archive_mode=row[10], archive_command=row[11],
    )  # fmt: skip


_ZERO_BLOCK = bytes(512)


class TarSniffer:
    """Follows a tar stream and keeps the contents of the named top-level members.

    Push-based (``feed`` as the bytes go by, so the stream is never held or re-read), while
    ``tarfile`` reads a stream itself: the headers are parsed by ``tarfile.TarInfo.frombuf``, the
    walk over the members is ours. A header costs ~12 us there against ~0.7 us for the hand-written
    parser it replaced: ~11 ms for the 1,000 files of a 322 MiB base backup, within the noise of
    the ~390 ms that reading, FastCDC and BLAKE3 take for the same stream (CPU time, 0.97-1.03x)."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.members: dict[str, bytes] = {}
        self._buf = bytearray()
        self._remaining = 0  # data bytes (plus padding) of the current member still to come
        self._capture: bytearray | None = None
        self._capture_size = 0
        self._capture_name = ""

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._remaining:
                take = min(self._remaining, len(view))
                if self._capture is not None and len(self._capture) < self._capture_size:
                    need = self._capture_size - len(self._capture)
                    self._capture += view[: min(take, need)]
                self._remaining -= take
                view = view[take:]
                if not self._remaining and self._capture is not None:
                    self.members[self._capture_name] = bytes(self._capture)
                    self._capture = None
                continue
            need = 512 - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == 512:
                self._header(bytes(self._buf))
                self._buf.clear()

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            return  # a zero block: the end-of-archive marker
        try:  # the standard library parses the header (ustar prefix, GNU base-256 sizes, checksum)
            info = tarfile.TarInfo.frombuf(block, "utf-8", "replace")
        except tarfile.HeaderError as exc:
            raise SourceError(
                f"pg_basebackup's tar stream has an invalid member header ({exc})",
                hint="run the backup again; if it persists, check the pg_basebackup binary",
            ) from None
        name, size = info.name, info.size
        self._remaining = (size + 511) // 512 * 512
        if name in self.wanted:
            self._capture = bytearray()
            self._capture_size = size
            self._capture_name = name
            if size == 0:
                self.members[name] = b""
                self._capture = None


@dataclass
class BaseBackup:
    """The running pg_basebackup: read ``stream``; after the block, the positions are set."""

    stream: Any
    sniffer: TarSniffer
    start_lsn: int = 0
    stop_lsn: int = 0
    timeline: int = 0
    label: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_raw: bytes = b""
    """The ``backup_manifest`` as PostgreSQL wrote it: stored with the backup, so that the next
    native incremental can name it (``pg_basebackup --incremental``)."""


class _SniffingReader:
    def __init__(self, raw: Any, sniffer: TarSniffer) -> None:
        self._raw = raw
        self._sniffer = sniffer

    def readinto(self, buf: memoryview | bytearray) -> int:
        n: int = self._raw.readinto(buf)
        if n:
            self._sniffer.feed(memoryview(buf)[:n])
        return n

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        self._sniffer.feed(data)
        return data


@contextmanager
def _private_file(data: bytes, tmp_root: Path | None) -> Iterator[Path]:
    if tmp_root is not None:
        tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmpdir = tempfile.mkdtemp(prefix="incremental-", dir=tmp_root)
    try:
        path = Path(tmpdir) / "backup_manifest"
        path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


SUMMARIZE_WAL_HINT = "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();"


def native_incremental_blocker(info: ConnInfo, since_lsn: int | None, timeline: int | None) -> str | None:
    """Why the server cannot take a native incremental now (None: it can, as far as this role
    sees). With ``since_lsn``, the WAL summaries must reach back to it on ``timeline``."""
    with postgres.connect(info) as conn:
        row = conn.execute(
            "select current_setting('server_version_num')::int,"
            " coalesce(current_setting('summarize_wal', true), 'off')"
        ).fetchone()
        assert row is not None
        num, summarize = int(row[0]), str(row[1])
        if num < 170000:
            return (
                f"the server is PostgreSQL {num // 10000}: native incremental backups need "
                "PostgreSQL 17 or newer"
            )
        if summarize != "on":
            return f"summarize_wal is off on the server (turn it on with: {SUMMARIZE_WAL_HINT})"
        if since_lsn is None:
            return None
        try:
            row = conn.execute(
                "select min(start_lsn)::text from pg_available_wal_summaries() where tli = %s", (timeline,)
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None  # pg_basebackup itself says so if the summaries do not reach back
        except psycopg.Error as exc:
            return f"cannot list the server's WAL summaries: {postgres.error_reason(exc)}"
    oldest = row[0] if row else None
    if oldest is None or parse_lsn(oldest) > since_lsn:
        have = f"start at {oldest}" if oldest else "do not exist yet"
        return (
            f"the server's WAL summaries on timeline {timeline} {have}, after the previous backup started "
            f"({format_lsn(since_lsn)}): summarize_wal was turned on after it, or the summaries were "
            "removed (wal_summary_keep_time); the next incremental can be native"
        )
    return None


_START = re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.M)
_START_TLI = re.compile(r"^START TIMELINE: (\d+)", re.M)


class PgBaseBackupSource:
    """A self-hosted cluster backed up with ``pg_basebackup`` (needs a REPLICATION role)."""

    def __init__(self, info: ConnInfo, *, bin_dir: Path | None = None, tmp_root: Path | None = None) -> None:
        self.info = info
        self._bin_dir = bin_dir
        self._tmp_root = tmp_root

    def describe(self) -> ClusterInfo:
        return describe_cluster(self.info)

    def switch_wal(self) -> None:
        with postgres.connect(self.info) as conn:
            conn.execute("select pg_switch_wal()")

    def schema_facts(self) -> dict[str, Any]:
        """The database's schema fingerprint, estimated row counts and bootstrap superuser, now
        (``source/facts.py``); what restore drills compare the restored cluster against."""
        with postgres.connect(self.info) as conn:
            try:
                return facts.cluster_facts_in(conn)
            except psycopg.Error as exc:
                raise SourceError(
                    f"cannot read the schema of {self.info.display()}: {postgres.error_reason(exc)}"
                ) from None

    def native_incremental_blocker(self, since_lsn: int, timeline: int) -> str | None:
        """Why a native incremental (``pg_basebackup --incremental``) based on a backup that
        started at ``since_lsn`` on ``timeline`` is not possible now; None when it is (as far as
        this role can see: ``pg_available_wal_summaries`` is for superusers by default)."""
        return native_incremental_blocker(self.info, since_lsn, timeline)

    @contextmanager
    def basebackup(
        self,
        label: str,
        *,
        archive_timeout: float,
        server_major: int,
        incremental_from: bytes | None = None,
    ) -> Iterator[BaseBackup]:
        """``incremental_from``: the previous backup's ``backup_manifest``; the server then sends
        only the blocks changed since that backup (PostgreSQL 17+, ``summarize_wal = on``)."""
        pg_basebackup = find_tool("pg_basebackup", server_major, self._bin_dir)
        app = f"cfbackupd-{label[-6:]}"
        conninfo = ConnInfo(
            params={**self.info.params, "application_name": app},
            password=self.info.password,
            setting=self.info.setting,
        )
        argv = [
            str(pg_basebackup), "--pgdata=-", "--format=tar", "--wal-method=none", "--checkpoint=fast",
            "--no-password", f"--label={label}", "--manifest-checksums=CRC32C", "--dbname", conninfo.safe(),
        ]  # fmt: skip
        with contextlib.ExitStack() as stack:
            if incremental_from is not None:
                path = stack.enter_context(_private_file(incremental_from, self._tmp_root))
                argv.append(f"--incremental={path}")
            yield from self._run_basebackup(argv, app, archive_timeout)

    def _run_basebackup(self, argv: list[str], app: str, archive_timeout: float) -> Iterator[BaseBackup]:
        sniffer = TarSniffer({"backup_label", "backup_manifest"})
        stop_watch = threading.Event()
        stalled: list[str] = []
        with libpq_env(self.info, self._tmp_root) as env:
            proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
            tail = StderrTail(proc)
            assert proc.stdout is not None
            widen_pipe(proc.stdout.fileno())
            watchdog = threading.Thread(
                target=self._watch_archiving,
                args=(proc, app, archive_timeout, stop_watch, stalled),
                name="archive-watchdog",
                daemon=True,
            )
            watchdog.start()
            assert proc.stdout is not None
            backup = BaseBackup(stream=_SniffingReader(proc.stdout, sniffer), sniffer=sniffer)
            try:
                yield backup
                rc = proc.wait()
            except BaseException:
                stop_process(proc)
                raise
            finally:
                stop_watch.set()
                proc.stdout.close()
                watchdog.join(timeout=10)
        if stalled:
            raise SourceError(stalled[0], hint="check archive_command and pg_stat_archiver on the server")
        if rc != 0:
            raise SourceError(f"pg_basebackup of {self.info.display()} failed (exit {rc}): {tail.text()}")
        self._positions(backup)

    def _positions(self, backup: BaseBackup) -> None:
        label = backup.sniffer.members.get("backup_label", b"").decode("utf-8", "replace")
        manifest_raw = backup.sniffer.members.get("backup_manifest")
        if not label or manifest_raw is None:
            raise SourceError("pg_basebackup's stream held no backup_label or backup_manifest")
        manifest = json.loads(manifest_raw)
        backup.manifest_raw = manifest_raw
        ranges = manifest.get("WAL-Ranges") or []
        if not ranges:
            raise SourceError("pg_basebackup's backup_manifest has no WAL-Ranges")
        start = _START.search(label)
        tli = _START_TLI.search(label)
        backup.label = label
        backup.manifest = manifest
        backup.start_lsn = parse_lsn(start.group(1)) if start else parse_lsn(ranges[0]["Start-LSN"])
        backup.timeline = int(tli.group(1)) if tli else int(ranges[-1]["Timeline"])
        backup.stop_lsn = parse_lsn(ranges[-1]["End-LSN"])

    def _watch_archiving(
        self,
        proc: subprocess.Popen[bytes],
        app: str,
        timeout: float,
        stop: threading.Event,
        stalled: list[str],
    ) -> None:
        """Stop pg_basebackup when the server waits longer than ``timeout`` for WAL archiving.

        While the server waits, also wake it up (``_NUDGE``): PostgreSQL up to 15 checks whether
        the last segment is archived, then sleeps a whole second unless its latch is set, and a
        WAL flush by any process sets the latch of every WAL sender. So a commit every
        ``_NUDGE_INTERVAL`` ends the wait within about ``wal_writer_delay`` of the archiver
        being done, not up to a second later (0.98 s -> 0.59-0.75 s on an idle server, most of
        it the archiver's two ``archive_command`` calls). PostgreSQL 16 wakes only the WAL
        senders that wait for WAL, so nothing is nudged there."""
        waiting_since: float | None = None
        conn: psycopg.Connection[Any] | None = None
        nudge = False
        interval = _WATCH_INTERVAL
        try:
            while not stop.wait(interval):
                interval = _WATCH_INTERVAL
                try:
                    if conn is None:
                        conn = postgres.connect(self.info)
                        nudge = conn.info.server_version < _NUDGE_BEFORE
                        # A nudge must never wait for a synchronous standby (one that is down
                        # would hold the watchdog, and with it the archive timeout).
                        conn.execute("set synchronous_commit = local")
                        conn.execute("set statement_timeout = '10s'")
                    row = conn.execute(
                        "select p.phase from pg_stat_progress_basebackup p"
                        " join pg_stat_activity a using (pid) where a.application_name = %s",
                        (app,),
                    ).fetchone()
                except (SourceError, psycopg.Error):
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if not row or row[0] != _WAITING_FOR_ARCHIVE:
                    waiting_since = None
                    continue
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > timeout:
                    stalled.append(
                        f"the WAL this backup needs was not archived within {timeout:.0f}s "
                        "(BACKUPD_WAL__ARCHIVE_TIMEOUT): the backup is not consistent and was abandoned"
                    )
                    log.error("backup_wal_not_archived", timeout_seconds=timeout)
                    stop_process(proc)
                    return
                if nudge:
                    try:
                        conn.execute(_NUDGE)
                        interval = _NUDGE_INTERVAL
                    except psycopg.Error:
                        nudge = False  # a standby (no transaction ids), or not allowed: wait as before
        finally:
            if conn is not None:
                conn.close()
