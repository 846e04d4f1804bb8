"""Physical restore and point-in-time recovery against real PostgreSQL.

The source cluster archives with ``archive_command = contentflow-backupd wal-push %p``; the
restored data directories are started with ``pg_ctl`` and must hold exactly the rows committed
before each target: to a time, to an LSN, to a restore point, from a full and from an
incremental backup, and after a promotion, along the newest timeline.
"""

from __future__ import annotations

import io
import os
import pwd
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.demo.checksums import table_checksums
from contentflow_backupd.errors import UsageError
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.ops.restore.timeline import Span, parse_history, timeline_at
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.settings import Settings, load_settings
from contentflow_backupd.source.extract import UnsafeArchive, extract_tar
from contentflow_backupd.source.pgdata import (
    Owner,
    conf_quote,
    restore_command,
    write_recovery_config,
)
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.wiring import App
from tests.e2e import helpers
from tests.e2e.physical import PASSPHRASE, PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import (
    TABLE,
    Mark,
    Restored,
    Workload,
    create_table,
    mark,
    rows,
    switch_and_wait_archived,
)
from tests.support.cli import Cli, Result

pytestmark = pytest.mark.pg


@dataclass
class History:
    """One source cluster with a full backup, an incremental one, and marks around them."""

    setup: PhysicalSetup
    before_full: Mark
    full: dict[str, Any]
    after_full: list[Mark]
    incremental: dict[str, Any]
    after_incremental: Mark
    restore_point: Mark
    last: Mark


def _mark_restore_point(setup: PhysicalSetup, name: str) -> Mark:
    """Make a restore point while writers are held off, so its row set is exact."""
    with setup.cluster.connect() as conn, conn.transaction():
        conn.execute(f"lock table {TABLE} in exclusive mode")
        row = conn.execute(f"select clock_timestamp()::text, max(id) from {TABLE}").fetchone()
        assert row is not None
        point = setup.cli.ok_json("restore-point", name)
    assert point["archived"] is True and point["name"] == name
    return Mark(time=row[0], max_id=int(row[1]), lsn=point["lsn"])


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    with physical_setup() as setup:
        pg = setup.cluster
        create_table(pg)
        app = pg.create_database("app")
        helpers.seed(pg, app, size_mb=2)
        with Workload(pg):
            time.sleep(0.2)
            before_full = mark(pg)
            time.sleep(0.1)
            full = setup.cli.ok_json("backup", "--kind", "full")
            after_full = []
            for _ in range(2):
                time.sleep(0.3)
                after_full.append(mark(pg))
            time.sleep(0.2)
            helpers.change(pg, app, fraction=0.05)
            incremental = setup.cli.ok_json("backup", "--kind", "incremental")
            time.sleep(0.3)
            after_incremental = mark(pg)
            time.sleep(0.3)
            restore_point = _mark_restore_point(setup, "before-deploy")
            time.sleep(0.3)
            last = mark(pg, xid=True)
            time.sleep(0.3)  # commits after the last mark: a time target needs one to stop at
        switch_and_wait_archived(pg)
        assert incremental["kind"] == "incremental" and incremental["parent_id"] == full["id"]
        yield History(
            setup, before_full, full, after_full, incremental, after_incremental, restore_point, last
        )


def restore(cli: Cli, pgdata: Path, *args: str, backup: str = "latest") -> dict[str, Any]:
    result = cli.run("restore", backup, "--pgdata", str(pgdata), *args, "--json")
    assert result.returncode == 0, str(result)
    out: dict[str, Any] = result.json()
    return out


def restored_rows(h: History, pgdata: Path, *, paused: bool = False) -> list[int]:
    server = Restored(pgdata, h.setup.cluster).start()
    try:
        server.wait_paused() if paused else server.wait_promoted()
        return rows(server)
    finally:
        server.stop()


def upto(max_id: int) -> list[int]:
    return list(range(1, max_id + 1))


# -- point in time -------------------------------------------------------------------------


def test_recovers_to_a_time_from_the_full_backup(history: History) -> None:
    target = history.after_full[0]
    pgdata = history.setup.base / "to-time-1"
    out = restore(history.setup.cli, pgdata, "--target-time", target.time, "--target-action", "promote")
    assert out["backup_id"] == history.full["id"]
    assert out["target"]["kind"] == "time" and out["status"] == "succeeded"
    assert set(out) >= {"status", "backup_id", "pgdata", "target", "restored_bytes", "duration_seconds"}
    assert out["next_steps"] and out["recovery_dir"] is None
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert "archive_mode = 'off'" in auto and "wal-fetch %f %p" in auto
    assert f"--config {history.setup.config}" in auto
    assert (pgdata / "recovery.signal").exists()
    assert restored_rows(history, pgdata) == upto(target.max_id)


def test_recovers_to_an_lsn(history: History) -> None:
    target = history.after_full[1]
    pgdata = history.setup.base / "to-lsn"
    out = restore(history.setup.cli, pgdata, "--target-lsn", target.lsn, "--target-action", "promote")
    assert out["backup_id"] == history.full["id"]  # the incremental ended after this LSN
    assert restored_rows(history, pgdata) == upto(target.max_id)


def test_recovers_to_a_time_starting_from_the_incremental_backup(history: History) -> None:
    target = history.after_incremental
    pgdata = history.setup.base / "to-time-incr"
    out = restore(history.setup.cli, pgdata, "--target-time", target.time, "--target-action", "promote")
    assert out["backup_id"] == history.incremental["id"]
    assert restored_rows(history, pgdata) == upto(target.max_id)


def test_recovers_to_a_restore_point_and_pauses_there(history: History) -> None:
    listed = history.setup.cli.ok_json("list-restore-points")
    assert [p["name"] for p in listed] == ["before-deploy"]
    assert listed[0]["lsn"] == history.restore_point.lsn
    pgdata = history.setup.base / "to-name"
    out = restore(history.setup.cli, pgdata, "--target-name", "before-deploy")
    assert out["backup_id"] == history.incremental["id"]
    assert out["target"]["action"] == "pause"
    assert restored_rows(history, pgdata, paused=True) == upto(history.restore_point.max_id)


def test_recovers_to_the_last_time_as_root_for_the_postgres_user(history: History) -> None:
    as_root = Cli(env=dict(history.setup.cli.env))  # runs as the test's user
    if os.geteuid() != 0:
        pytest.skip("needs root to give the data directory to postgres")
    target = history.last
    pgdata = history.setup.base / "to-last"
    out = restore(
        as_root, pgdata, "--target-time", target.time, "--target-action", "promote", "--owner", "postgres"
    )
    postgres = pwd.getpwnam("postgres").pw_uid
    assert out["backup_id"] == history.incremental["id"]
    assert {p.stat().st_uid for p in [pgdata, *pgdata.rglob("*")]} == {postgres}
    assert {stat.S_IMODE(p.stat().st_mode) for p in pgdata.rglob("*") if p.is_file()} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in [pgdata, *pgdata.rglob("*")] if p.is_dir()} == {0o700}
    assert restored_rows(history, pgdata) == upto(target.max_id)


def test_recovers_to_an_xid_from_the_newest_backup(history: History) -> None:
    target = history.last
    assert target.xid is not None
    pgdata = history.setup.base / "to-xid"
    out = restore(history.setup.cli, pgdata, "--target-xid", target.xid, "--target-action", "promote")
    assert out["backup_id"] == history.incremental["id"]
    assert any("known only during recovery" in w for w in out["warnings"])
    assert restored_rows(history, pgdata) == upto(target.max_id)


def test_latest_from_settings_without_a_config_file_equals_the_source(history: History) -> None:
    """Settings only in the environment, passphrase by value: the restore writes a settings
    directory for restore_command and keeps the secret out of postgresql.auto.conf."""
    base = history.setup.base
    env_only = Cli(
        env={
            "BACKUPD_REPOSITORY": f"file://{history.setup.repo}",
            "BACKUPD_STATE_DIR": str(base / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        },
        user="postgres",
    )
    pgdata = base / "latest"
    out = restore(env_only, pgdata)
    assert out["backup_id"] == history.incremental["id"]
    assert out["target"]["kind"] is None
    recovery = base / "latest.recovery"
    assert out["recovery_dir"] == str(recovery)
    assert stat.S_IMODE(recovery.stat().st_mode) == 0o700
    for name in ("backupd.toml", "passphrase"):
        assert stat.S_IMODE((recovery / name).stat().st_mode) == 0o600
    assert (recovery / "passphrase").read_text().strip() == PASSPHRASE
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert PASSPHRASE not in auto and f"--config {recovery / 'backupd.toml'}" in auto
    assert PASSPHRASE not in (recovery / "backupd.toml").read_text()
    assert any(str(recovery) in step for step in out["next_steps"])

    source = history.setup.cluster
    server = Restored(pgdata, source).start()
    try:
        server.wait_promoted()
        assert rows(server)[-1] > history.last.max_id
        for db in ("postgres", "app"):
            with source.connect(db) as a, server.connect(db) as b:
                assert table_checksums(b) == table_checksums(a)
    finally:
        server.stop()


# -- refusals: nothing is written ----------------------------------------------------------


def refused(result: Result, *needles: str) -> str:
    assert result.returncode == 2, str(result)
    for needle in needles:
        assert needle in result.stderr, str(result)
    return result.stderr


def test_a_non_empty_pgdata_is_refused(history: History) -> None:
    pgdata = history.setup.base / "not-empty"
    pgdata.mkdir()
    (pgdata / "keep.txt").write_text("mine")
    result = history.setup.cli.run("restore", "latest", "--pgdata", str(pgdata))
    refused(result, "not empty")
    assert [p.name for p in pgdata.iterdir()] == ["keep.txt"]


def test_a_target_before_the_oldest_backup_is_refused(history: History) -> None:
    pgdata = history.setup.base / "too-early"
    for option, value in (("--target-time", history.before_full.time), ("--target-lsn", "0/1000000")):
        result = history.setup.cli.run("restore", "latest", "--pgdata", str(pgdata), option, value)
        refused(result, "before the oldest physical backup ended", history.full["id"], "nothing was written")
        assert not pgdata.exists() and not pgdata.with_name("too-early.recovery").exists()
    result = history.setup.cli.run(
        "restore",
        history.incremental["id"],
        "--pgdata",
        str(pgdata),
        "--target-time",
        history.after_full[0].time,
    )
    refused(result, f"before backup {history.incremental['id']} ended")
    assert not pgdata.exists()


def test_unreachable_targets_are_refused(history: History) -> None:
    pgdata = history.setup.base / "unreachable"
    cli = history.setup.cli
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    stderr = refused(
        cli.run("restore", "latest", "--pgdata", str(pgdata), "--target-time", future), "not reachable"
    )
    assert "the newest" in stderr and "was stored at" in stderr
    refused(cli.run("restore", "latest", "--pgdata", str(pgdata), "--target-lsn", "FF/0"), "not reachable")
    refused(
        cli.run("restore", "latest", "--pgdata", str(pgdata), "--target-name", "nope"), "no restore point"
    )
    refused(
        cli.run("restore", "latest", "--pgdata", str(pgdata), "--target-timeline", "7"),
        "timeline 7 has no history file",
    )
    assert not pgdata.exists()


def test_bad_option_combinations_are_refused(history: History) -> None:
    cli = history.setup.cli
    pgdata = str(history.setup.base / "bad-options")
    refused(cli.run("restore", "latest", "--pgdata", pgdata, "--to-file", "/tmp/x"), "not with --to-file")
    refused(
        cli.run("restore", "latest", "--pgdata", pgdata, "--target-lsn", "0/1", "--target-xid", "9"),
        "at most one recovery target",
    )
    refused(cli.run("restore", "latest", "--to-file", "/tmp/x", "--target-lsn", "0/1"), "only with --pgdata")
    refused(cli.run("restore", "latest", "--pgdata", pgdata, "--target-action", "promote"), "needs a target")
    assert not Path(pgdata).exists()


def test_restore_point_names_are_unique(history: History) -> None:
    result = history.setup.cli.run("restore-point", "before-deploy")
    refused(result, "already has a restore point named 'before-deploy'")


# -- timelines -----------------------------------------------------------------------------


def test_a_promoted_restore_then_the_newest_timeline() -> None:
    """Restore to an LSN and promote with --keep-archiving: the new timeline's WAL and history
    reach the archive. The old primary goes on writing on timeline 1. A restore with
    --target-timeline latest follows timeline 2; with current it stays on timeline 1."""
    with physical_setup() as setup:
        pg = setup.cluster
        create_table(pg)
        insert = f"insert into {TABLE} (body) select 'tl1' from generate_series(1, 100)"
        pg.execute(insert)
        setup.cli.ok_json("backup", "--kind", "full")
        pg.execute(insert)
        fork = mark(pg)
        pg.execute(insert)
        switch_and_wait_archived(pg)

        promoted_dir = setup.base / "promoted"
        out = restore(
            setup.cli,
            promoted_dir,
            "--target-lsn",
            fork.lsn,
            "--target-action",
            "promote",
            "--keep-archiving",
        )
        assert out["target"]["resolved_timeline"] == 1
        assert "archive_mode" not in (promoted_dir / "postgresql.auto.conf").read_text()
        promoted = Restored(promoted_dir, pg).start()
        try:
            promoted.wait_promoted()
            assert rows(promoted) == upto(fork.max_id)
            promoted.execute(f"insert into {TABLE} (body) select 'tl2' from generate_series(1, 50)")
            on_tl2 = rows(promoted)
            assert promoted.execute("select pg_walfile_name(pg_current_wal_lsn())")[0][0][:8] == "00000002"
            switch_and_wait_archived(promoted)
        finally:
            promoted.stop()
        assert (setup.repo / "main" / "wal" / "00000002" / "00000002.history").exists()

        pg.execute(insert)  # the old primary goes on, on timeline 1
        switch_and_wait_archived(pg)
        on_tl1 = rows(pg)

        latest_dir = setup.base / "latest-timeline"
        out = restore(setup.cli, latest_dir, "--target-timeline", "latest")
        assert out["target"]["resolved_timeline"] == 2
        server = Restored(latest_dir, pg).start()
        try:
            server.wait_promoted()
            assert rows(server) == on_tl2
            assert server.execute(f"select count(*) from {TABLE} where body = 'tl2'")[0][0] == 50
        finally:
            server.stop()

        current_dir = setup.base / "current-timeline"
        out = restore(setup.cli, current_dir, "--target-timeline", "current")
        assert out["target"]["resolved_timeline"] == 1
        server = Restored(current_dir, pg).start()
        try:
            server.wait_promoted()
            assert rows(server) == on_tl1
        finally:
            server.stop()


def test_a_damaged_chunk_stops_the_restore_and_removes_what_it_wrote() -> None:
    with physical_setup() as setup:
        create_table(setup.cluster)
        backup = setup.cli.ok_json("backup", "--kind", "full")
        # A chunk of the data directory's stream: the backup's second stream, PostgreSQL's
        # backup_manifest, is not needed by a full restore (verify checks it), so a damaged
        # chunk of it rightly leaves the restore alone.
        repo = Repository.open(LocalStorage(setup.repo), KekSecret("passphrase", PASSPHRASE.encode(), "t"))
        manifest = repo.read_manifest("main", backup["id"])
        (base,) = [s for s in manifest.streams if s.name == "base.tar"]
        ids = sorted({c.id for c in base.chunks})
        victim = setup.repo / layout.chunk_key("main", manifest.generation, ids[len(ids) // 2])
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size: only reading it back can tell
        victim.write_bytes(bytes(data))
        pgdata = setup.base / "damaged"
        result = setup.cli.run("restore", "latest", "--pgdata", str(pgdata))
        assert result.returncode == 1 and victim.name in result.stderr, str(result)
        assert not pgdata.exists()
        empty = setup.base / "empty"
        empty.mkdir()
        if os.geteuid() == 0:
            os.chown(empty, pwd.getpwnam("postgres").pw_uid, -1)
        assert setup.cli.run("restore", "latest", "--pgdata", str(empty)).returncode == 1
        assert empty.is_dir() and not any(empty.iterdir())


def test_a_sealed_chunk_with_other_data_fails_the_restore_and_every_restore_is_audited() -> None:
    # A restore proves its bytes with AES-GCM (each chunk) and the stream digest (the whole
    # stream); it no longer hashes each chunk again. So a chunk sealed with the repository's key
    # but holding other bytes (only a writer's bug could store one) must still fail the restore,
    # at the digest, and remove what it wrote. The audit catalog opens while the restore runs:
    # success and failure are both recorded, and a catalog that cannot be opened only warns.
    with physical_setup() as setup:
        create_table(setup.cluster)
        backup = setup.cli.ok_json("backup", "--kind", "full")
        good = setup.cli.ok_json("restore", "latest", "--pgdata", str(setup.base / "good"))
        assert good["backup_id"] == backup["id"] and (setup.base / "good" / "backup_label").is_file()
        unreachable = {"BACKUPD_CATALOG_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"}
        blind = setup.cli.run("restore", "latest", "--pgdata", str(setup.base / "blind"), env=unreachable)
        assert blind.returncode == 0 and "audit_unavailable" in blind.stderr, str(blind)

        repo = Repository.open(LocalStorage(setup.repo), KekSecret("passphrase", PASSPHRASE.encode(), "t"))
        manifest = repo.read_manifest("main", backup["id"])
        (base,) = [s for s in manifest.streams if s.name == "base.tar"]
        key, altered = _altered_chunk(repo, manifest.generation, [c.id for c in base.chunks])
        victim = setup.repo / key
        victim.write_bytes(repo.encode(key, altered))  # validly sealed, same sizes, same owner
        assert repo.get_object(key) == altered
        pgdata = setup.base / "altered"
        result = setup.cli.run("restore", "latest", "--pgdata", str(pgdata))
        assert result.returncode == 1 and "does not match its digest" in result.stderr, str(result)
        assert not pgdata.exists() and not (setup.base / "altered.recovery").exists()
        named = setup.cli.run("verify", backup["id"])
        assert named.returncode == 1 and victim.name in named.stdout + named.stderr, str(named)

        restores = [e for e in setup.cli.ok_json("audit") if e["action"] == "restore"]
        assert [e["outcome"] for e in restores] == ["succeeded", "failed"]
        assert restores[0]["details"]["backup_id"] == backup["id"]
        assert restores[1]["details"]["pgdata"] == str(pgdata)
        assert "does not match its digest" in restores[1]["details"]["error"]


def _altered_chunk(repo: Repository, generation: str, ids: list[str]) -> tuple[str, bytes]:
    """A chunk of the tar stream and its plaintext with one byte changed: a byte of a file's
    contents, far from any tar header (a header holds ``ustar`` at byte 257), so the tar stays
    readable; and one whose sealed object keeps its stored size, so the check of sizes before a
    restore cannot tell (only the bytes can)."""
    for cid in ids[len(ids) // 2 :] + ids[: len(ids) // 2]:
        key = layout.chunk_key("main", generation, cid)
        stored = len(repo.storage.get(key))
        plain = repo.get_object(key)
        for at in range(len(plain) // 2, len(plain) // 2 + 4000, 13):
            if len(plain) < 8192 or b"ustar" in plain[at - 1024 : at + 1024]:
                break
            altered = plain[:at] + bytes([plain[at] ^ 0x01]) + plain[at + 1 :]
            if len(repo.encode(key, altered)) == stored:
                return key, altered
    raise AssertionError("no chunk of the base backup could be altered in place")


# -- the extractor refuses unsafe streams --------------------------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    return [raw[i : i + 1000] for i in range(0, len(raw), 1000)]


def _member(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info


ME = Owner(os.geteuid(), os.getegid(), "me")


def test_extractor_writes_files_dirs_and_inner_links(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    stream = _tar(
        (_member("./base", tarfile.DIRTYPE), b""),
        (_member("base/1/PG_VERSION"), b"15\n"),
        (_member("global/pg_control"), b"x" * 3000),
        (_member("base/link", tarfile.SYMTYPE, "1/PG_VERSION"), b""),
        (_member("base/hard", tarfile.LNKTYPE, "base/1/PG_VERSION"), b""),
    )
    stats = extract_tar(stream, dest, ME)
    assert (dest / "base/1/PG_VERSION").read_text() == "15\n"
    assert (dest / "base/link").read_text() == "15\n" and (dest / "base/hard").read_text() == "15\n"
    assert stats.files == 2 and stats.bytes == 3003
    assert stat.S_IMODE((dest / "global/pg_control").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "base/1").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/evil"), "absolute"),
        (_member("base/../../evil"), "leaves the data directory"),
        (_member("pg_tblspc/16384", tarfile.SYMTYPE, "/srv/tablespace"), "tablespace"),
        (_member("escape", tarfile.SYMTYPE, "../outside"), "may point outside"),
        (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "absolute"),
        (_member("hard", tarfile.LNKTYPE, "not-extracted"), "hard link"),
        (_member("dev", tarfile.CHRTYPE), "device, FIFO"),
        (_member("fifo", tarfile.FIFOTYPE), "device, FIFO"),
    ],
)
def test_extractor_refuses_members_that_leave_the_directory(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match=message):
        extract_tar(_tar((_member("PG_VERSION"), b"15\n"), (member, b"")), dest, ME)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["PG_VERSION", "data"]


def test_extractor_never_writes_through_a_link_or_twice(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="twice"):
        extract_tar(_tar((_member("f"), b"1"), (_member("f"), b"2")), dest, ME)
    assert (dest / "f").read_text() == "1"
    dest2 = tmp_path / "data2"
    dest2.mkdir()
    with pytest.raises(UnsafeArchive, match="twice"):
        extract_tar(_tar((_member("l", tarfile.SYMTYPE, "f"), b""), (_member("l"), b"x")), dest2, ME)
    assert not (dest2 / "f").exists()


# -- pure rules ----------------------------------------------------------------------------


def test_parse_history_and_the_timeline_of_each_segment() -> None:
    text = "# comment\n1\t0/3000158\tno recovery target specified\n\n2\t0/5800000\tafter LSN 0/57FFFF0\n"
    path = parse_history(text, 3)
    assert path == [Span(1, 0, 0x3000158), Span(2, 0x3000158, 0x5800000), Span(3, 0x5800000, None)]
    size = 16 * 1024 * 1024
    assert [timeline_at(path, n, size) for n in (1, 2, 3, 4, 5, 6)] == [1, 1, 2, 2, 3, 3]
    assert timeline_at([Span(1, 0, None)], 9, size) == 1


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        ({}, {"recovery_target_timeline": "latest"}),
        (
            {"time": "2026-11-24T06:27:00.5+01:00", "action": "promote"},
            {
                "recovery_target_time": "2026-11-24 05:27:00.500000+00:00",
                "recovery_target_action": "promote",
                "recovery_target_timeline": "latest",
            },
        ),
        (
            {"time": "2026-11-24 06:27:00", "timeline": "current"},
            {
                "recovery_target_time": "2026-11-24 06:27:00+00:00",
                "recovery_target_action": "pause",
                "recovery_target_timeline": "current",
            },
        ),
        (
            {"lsn": "0/3a000b8", "timeline": "2"},
            {
                "recovery_target_lsn": "0/3A000B8",
                "recovery_target_action": "pause",
                "recovery_target_timeline": "2",
            },
        ),
        ({"xid": "1234", "action": "shutdown"}, {"recovery_target_xid": "1234"}),
        ({"name": "before deploy"}, {"recovery_target_name": "before deploy"}),
    ],
)
def test_recovery_target_settings(options: dict[str, str], settings: dict[str, str]) -> None:
    got = RecoveryTarget.parse(**options).settings()
    assert got.items() >= settings.items()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time": "yesterday"}, "not an ISO 8601 time"),
        ({"lsn": "12345"}, "not an LSN"),
        ({"xid": "-1"}, "not a transaction id"),
        ({"name": "x" * 64}, "1 to 63"),
        ({"timeline": "newest"}, "not 'latest'"),
        ({"action": "promote"}, "needs a target"),
        ({"lsn": "0/1", "name": "a"}, "at most one"),
    ],
)
def test_recovery_target_refusals(options: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RecoveryTarget.parse(**options)


def test_restore_command_is_quoted_for_the_shell_and_for_postgresql() -> None:
    command = restore_command(["/opt/my tools/contentflow-backupd"], Path("/etc/100%/it's.toml"))
    assert command == (
        "'/opt/my tools/contentflow-backupd' --config '/etc/100%%/it'\"'\"'s.toml' wal-fetch %f %p"
    )
    assert conf_quote("a'b\\c") == "'a''b\\\\c'"


def test_the_recovery_settings_file_loads_as_settings(tmp_path: Path) -> None:
    settings = Settings(
        repository="file:///srv/backups",
        state_dir=Path("relative/state"),
        cluster="prod",
        encryption={"passphrase": 'pass "phrase" \\ \u00e9'},
        s3={"region": "eu-west-1"},
    )
    config = App(settings).recovery_config()
    assert config.config_file is None and config.passphrase is not None
    directory = tmp_path / "data.recovery"
    directory.mkdir()
    path = write_recovery_config(directory, config, ME)
    loaded, _ = load_settings(path)
    assert loaded.repository == "file:///srv/backups" and loaded.cluster == "prod"
    assert loaded.state_dir == Path.cwd() / "relative/state" and loaded.s3.region == "eu-west-1"
    assert loaded.encryption.passphrase is None
    assert loaded.encryption.passphrase_file == directory / "passphrase"
    assert (directory / "passphrase").read_text() == 'pass "phrase" \\ \u00e9\n'
    assert "\u00e9" not in path.read_text() and "pass " not in path.read_text()


def test_the_recovery_settings_file_carries_a_kms_key_id(tmp_path: Path) -> None:
    settings = Settings(
        repository="s3://bucket/prefix",
        state_dir=tmp_path / "state",
        encryption={"kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/abc", "kms_region": "eu-west-1"},
    )
    config = App(settings).recovery_config()
    assert any("kms:Decrypt" in note for note in config.notes)
    directory = tmp_path / "data.recovery"
    directory.mkdir()
    loaded, _ = load_settings(write_recovery_config(directory, config, ME))
    assert loaded.encryption.kms_key_id == "arn:aws:kms:eu-west-1:123456789012:key/abc"
    assert loaded.encryption.kms_region == "eu-west-1" and loaded.encryption.passphrase_file is None
