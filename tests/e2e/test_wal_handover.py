"""The WAL handover (docs/design/fleet.md, step 8) against real PostgreSQL 15, 16 and 18: the
replication slot is a guard that ``wal-stream`` advances only to the end of what is archived,
``pg_receivewal`` streams without it, and a successor with an empty spool (another host, or the
same one after its spool was lost) seeds it from the repository and streams what its dead
predecessor received but never uploaded. Two streams of one cluster at once do no harm.

Each "host" here is a ``wal-stream`` with its own state directory (hence its own spool) on the
one shared repository, as two daemons of a fleet would be."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contentflow_backupd.ops.wal.archive import check_wal_chain
from contentflow_backupd.procs import process_alive
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.receivewal import PgReceiveWal
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.wal import classify, parse_lsn, parse_segment, segment_of_lsn
from tests.conftest import PASSPHRASE
from tests.e2e.physical import physical_setup
from tests.e2e.pitr_helpers import Restored
from tests.e2e.test_wal_stream import SEGMENT_SIZE, Stream, server_wal, switch_wal, wait_for, write_wal
from tests.support.cli import Cli
from tests.support.pg import PG_MAJORS, PgCluster, pg_bin_dir, running_cluster

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module", params=PG_MAJORS, ids=[f"pg{m}" for m in PG_MAJORS])
def major_pg(request: pytest.FixtureRequest) -> Iterator[tuple[int, PgCluster]]:
    """A cluster of each major in turn, of this module alone: the tests hold slots and switch WAL."""
    major: int = request.param
    with running_cluster(prefix=f"backupd-handover-pg{major}-", bin_dir=pg_bin_dir(major)) as cluster:
        assert cluster.version == major
        cluster.execute("create table if not exists t (id serial primary key, body text)")
        yield major, cluster


@dataclass
class Fleet:
    """One cluster's WAL, one repository, one guard slot; ``host(name)`` is one daemon's view."""

    major: int
    pg: PgCluster
    base: Path
    slot: str
    archive: WalArchive

    def host(self, name: str) -> Cli:
        return Cli(
            env={
                "BACKUPD_DATABASE_URL": self.pg.url("postgres"),
                "BACKUPD_REPOSITORY": f"file://{self.base / 'repo'}",
                "BACKUPD_STATE_DIR": str(self.base / name),
                "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
                "BACKUPD_WAL__SLOT": self.slot,
                "BACKUPD_PG_BIN": str(pg_bin_dir(self.major)),
                "BACKUPD_MODE": "physical",
                "BACKUPD_WAL__ARCHIVE_TIMEOUT": "60",
                "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
            }
        )

    def spool(self, name: str) -> Path:
        return self.base / name / "wal-spool" / "main"

    def segments(self) -> list[str]:
        return [n for n in self.archive.names() if classify(n) == "segment"]

    def guard(self) -> int | None:
        rows = self.pg.execute(
            "select restart_lsn::text from pg_replication_slots where slot_name = %s", params=(self.slot,)
        )
        return parse_lsn(rows[0][0]) if rows and rows[0][0] is not None else None

    def end_of(self, name: str) -> int:
        return parse_segment(name, SEGMENT_SIZE).next().start_lsn(SEGMENT_SIZE)


@pytest.fixture
def fleet(major_pg: tuple[int, PgCluster], tmp_path: Path) -> Iterator[Fleet]:
    major, pg = major_pg
    slot = "backupd_handover_" + uuid.uuid4().hex[:8]
    Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url("postgres"),
            "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
            "BACKUPD_STATE_DIR": str(tmp_path / "init"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        }
    ).run("init", check=True)
    pg.execute("checkpoint")
    repo = Repository.open(
        LocalStorage(tmp_path / "repo"), KekSecret("passphrase", PASSPHRASE.encode(), "test")
    )
    yield Fleet(major=major, pg=pg, base=tmp_path, slot=slot, archive=WalArchive(repo, "main"))
    wait_for(
        "the slot to be free",
        lambda: (
            not pg.execute(
                "select 1 from pg_replication_slots where slot_name = %s and active", params=(slot,)
            )
        ),
    )
    pg.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
        params=(slot,),
    )


class GuardWatch:
    """Samples the guard slot's position on a thread, for the whole test."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GuardWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.append(self.fleet.guard())

    def moves(self) -> list[int]:
        """The distinct positions, in the order seen (from the slot's creation on)."""
        out: list[int] = []
        for lsn in self.seen:
            if lsn is None and not out:
                continue  # not created yet
            assert lsn is not None, "the guard slot lost its WAL or vanished"
            if not out or out[-1] != lsn:
                out.append(lsn)
        return out


def start(cli: Cli) -> Stream:
    stream = Stream(cli.popen("wal-stream"))
    wait_for("pg_receivewal to start", lambda: stream.receiver_pid() or stream.proc.poll() is not None)
    assert stream.proc.poll() is None, stream.log()
    return stream


def stop(stream: Stream) -> None:
    rc = stream.stop()
    assert rc == 0, stream.log()


def wait_archived(fleet: Fleet, *names: str) -> None:
    wait_for(f"{', '.join(names)} archived", lambda: set(names) <= set(fleet.archive.names()))


def assert_no_gap(fleet: Fleet, since: str) -> list[str]:
    """No gap in the archive from segment ``since``; every segment the server still has is
    archived byte for byte. Returns the archived segments."""
    report = check_wal_chain(fleet.archive, parse_segment(since, SEGMENT_SIZE), SEGMENT_SIZE)
    assert report.ok, report.to_json()
    names = fleet.segments()
    for name in names:
        theirs = server_wal(fleet.pg, name)
        if theirs is not None:
            assert fleet.archive.fetch(name) == theirs, name
    return names


def assert_guard_followed_the_archive(watch: GuardWatch, fleet: Fleet) -> None:
    """The guard never moved back, and every place it moved to from where it was first seen (its
    creation, or where the earlier version left it) is the end of an archived segment."""
    moves = watch.moves()
    assert len(moves) >= 2, moves
    assert moves == sorted(moves), f"the guard moved back: {moves}"
    ends = {fleet.end_of(n) for n in fleet.segments()}
    assert set(moves[1:]) <= ends, (sorted(set(moves[1:]) - ends), sorted(ends))


def test_confirm_archived_moves_an_inactive_slot_forward_only(fleet: Fleet) -> None:
    """``pg_replication_slot_advance`` on an inactive physical slot, on each major."""
    receiver = PgReceiveWal(
        ConnInfo.parse(fleet.pg.url("postgres")), spool_dir=fleet.base / "s", slot=fleet.slot
    )
    assert receiver.confirm_archived(1 << 40) is None  # no slot yet: nothing to move
    assert receiver.ensure_slot() == fleet.major
    created = fleet.guard()
    assert created is not None
    done = [switch_wal(fleet.pg) for _ in range(2)]
    assert receiver.confirm_archived(fleet.end_of(done[1])) == fleet.end_of(done[1])
    assert fleet.guard() == fleet.end_of(done[1])
    assert receiver.confirm_archived(fleet.end_of(done[0])) == fleet.end_of(done[1])  # never back
    assert receiver.confirm_archived(created) == fleet.end_of(done[1])
    assert fleet.guard() == fleet.end_of(done[1])
    assert fleet.pg.execute(
        "select active, slot_type from pg_replication_slots where slot_name = %s", params=(fleet.slot,)
    ) == [(False, "physical")]


def test_a_successor_with_an_empty_spool_streams_what_a_killed_stream_never_uploaded(fleet: Fleet) -> None:
    pg = fleet.pg
    # an upgrade: the slot exists (the earlier version streamed on it) and keeps name and WAL
    pg.execute("select pg_create_physical_replication_slot(%s, true)", params=(fleet.slot,))
    before = fleet.guard()
    assert before is not None
    first = fleet.host("first")
    with GuardWatch(fleet) as watch:
        a = start(first)
        try:
            backup = first.ok_json("backup", "--kind", "full")
            start_lsn = backup["start_lsn"]
            start_lsn = parse_lsn(start_lsn) if isinstance(start_lsn, str) else int(start_lsn)
            since = segment_of_lsn(start_lsn, int(backup["timeline"]), SEGMENT_SIZE).name(SEGMENT_SIZE)
            done = switch_wal(pg)
            wait_archived(fleet, done)
            newest = fleet.segments()[-1]
            wait_for(
                "the guard at the end of the archived WAL", lambda: fleet.guard() == fleet.end_of(newest)
            )

            # the repository stops taking WAL: pg_receivewal still fills the spool
            wal_dir = fleet.base / "repo" / "main" / "wal"
            away = wal_dir.with_name("wal.away")
            wal_dir.rename(away)
            wal_dir.write_text("not a directory: every WAL put fails")
            spooled = [switch_wal(pg) for _ in range(3)]
            wait_for("the new segments in the spool", lambda: (fleet.spool("first") / spooled[-1]).exists())
            wait_for("an upload to fail", lambda: a.events("wal_upload_failed"))
            assert fleet.guard() == fleet.end_of(newest), "the guard moved past WAL that is not archived"

            receiver = a.receiver_pid()
            assert receiver is not None
            os.kill(a.proc.pid, signal.SIGKILL)  # the host dies: its spool is lost with it
        finally:
            if a.proc.poll() is None:
                a.proc.kill()
            a.proc.wait()
        wait_for("its pg_receivewal to end", lambda: not process_alive(receiver))
        wal_dir.unlink()
        away.rename(wal_dir)
        assert not set(spooled) & set(fleet.segments())

        # checkpoints recycle every segment nobody guards: the guard keeps the spooled ones
        write_wal(pg)
        pg.execute("checkpoint")
        pg.execute("select pg_switch_wal()")
        pg.execute("checkpoint")
        assert all(server_wal(pg, n) is not None for n in spooled), "the guard did not keep the WAL"
        assert fleet.guard() == fleet.end_of(newest)

        second = fleet.host("second")
        b = start(second)
        try:
            after = switch_wal(pg)
            wait_archived(fleet, *spooled, after)
            seeded = b.events("wal_spool_seeded")
            assert [e["wal"] for e in seeded] == [newest], b.log()
            names = assert_no_gap(fleet, since)
            assert {since, done, *spooled, after} <= set(names)
            last = names[-1]
            wait_for("the guard at the new end", lambda: fleet.guard() == fleet.end_of(last))
        finally:
            stop(b)
    assert watch.moves()[0] == before  # kept where the earlier version left it
    assert_guard_followed_the_archive(watch, fleet)
    # the same checkpoints now recycle what is archived: the test above could tell the difference
    write_wal(pg)
    pg.execute("checkpoint")
    pg.execute("select pg_switch_wal()")
    pg.execute("checkpoint")
    assert server_wal(pg, spooled[0]) is None


def test_two_streams_of_one_cluster_at_once_do_no_harm(fleet: Fleet) -> None:
    pg = fleet.pg
    one, two = fleet.host("one"), fleet.host("two")
    with GuardWatch(fleet) as watch:
        a = start(one)
        b: Stream | None = None
        try:
            since = switch_wal(pg)
            wait_archived(fleet, since)
            b = start(two)  # a successor starts while the first keeps streaming
            written = [switch_wal(pg) for _ in range(4)]
            wait_archived(fleet, *written)
            last = written[-1]
            wait_for("the guard at the end", lambda: fleet.guard() == fleet.end_of(last))
            assert a.proc.poll() is None and b.proc.poll() is None
            for stream in (a, b):
                for bad in ("wal_upload_failed", "wal_stream_failed", "pg_receivewal_exited"):
                    assert not stream.events(bad), stream.log()
        finally:
            stop(a)
            if b is not None:
                stop(b)
    assert_guard_followed_the_archive(watch, fleet)
    names = assert_no_gap(fleet, since)
    assert {since, *written} <= set(names)
    pushed = [e for s in (a, b) for e in s.events("wal_segment_archived") if e["wal"] in written]
    assert {e["wal"] for e in pushed} == set(written)
    # both received the same WAL: the second to push a segment found it stored, byte for byte
    assert any(e["status"] == "duplicate" for e in pushed), [(e["wal"], e["status"]) for e in pushed]


@pytest.mark.parametrize("major", PG_MAJORS, ids=[f"pg{m}" for m in PG_MAJORS])
def test_restore_to_latest_after_a_handover_has_every_row(major: int) -> None:
    """The end-to-end proof: a base backup, a stream killed with WAL it never uploaded, a
    successor on an empty spool, and ``restore latest`` replays to the very last row. Runs as
    in production (the ``postgres`` user, a configuration file): the restored server fetches WAL
    with ``wal-fetch``."""
    with physical_setup(archive=False, bin_dir=pg_bin_dir(major)) as setup:
        pg = setup.cluster
        pg.execute("create table t (id serial primary key, body text)")
        repo_wal = setup.repo / "main" / "wal"

        def on(host: str) -> Stream:
            stream = Stream(setup.cli.popen("wal-stream", env={"BACKUPD_STATE_DIR": str(setup.base / host)}))
            wait_for(
                "pg_receivewal to start", lambda: stream.receiver_pid() or stream.proc.poll() is not None
            )
            assert stream.proc.poll() is None, stream.log()
            return stream

        a = on("first")
        try:
            setup.cli.ok_json("backup", "--kind", "full")
            wait_archived_in(setup.repo, switch_wal(pg))
            away = repo_wal.with_name("wal.away")
            repo_wal.rename(away)
            repo_wal.write_text("not a directory: every WAL put fails")
            spooled = [switch_wal(pg) for _ in range(2)]
            spool = setup.base / "first" / "wal-spool" / "main"
            wait_for("the segments in the spool", lambda: (spool / spooled[-1]).exists())
            receiver = a.receiver_pid()
            os.kill(a.proc.pid, signal.SIGKILL)
        finally:
            if a.proc.poll() is None:
                a.proc.kill()
            a.proc.wait()
        wait_for("its pg_receivewal to end", lambda: receiver is None or not process_alive(receiver))
        repo_wal.unlink()
        away.rename(repo_wal)
        pg.execute("checkpoint")

        b = on("second")
        try:
            write_wal(pg)
            wait_archived_in(setup.repo, *spooled, switch_wal(pg))
        finally:
            rc = b.stop()
        assert rc == 0, b.log()
        expected = pg.execute("select count(*), max(id), sum(length(body)) from t")

        pgdata = setup.base / "restored"
        result = setup.cli.run("restore", "latest", "--pgdata", str(pgdata), "--json")
        assert result.returncode == 0, str(result)
        server = Restored(pgdata, pg).start()
        try:
            server.wait_promoted()
            assert server.execute("select count(*), max(id), sum(length(body)) from t") == expected
        finally:
            server.stop()


def wait_archived_in(repo: Path, *names: str) -> None:
    wanted = {f"{n[:8]}/{n}" for n in names}

    def done() -> bool:
        wal = repo / "main" / "wal"
        return wal.is_dir() and wanted <= {f"{p.parent.name}/{p.name}" for p in wal.glob("*/*")}

    wait_for(f"{', '.join(names)} archived", done)
