"""Three daemons share a fleet (docs/design/fleet.md, step 8 and section 3): one PostgreSQL
catalog, six real clusters (three physical in ``stream`` mode with a write loop, three logical),
each daemon with its own state directory, HTTP port and ``fleet.member``. Once the leases spread
the clusters two per daemon, ``kill -9`` one daemon while it archives WAL and while one of its
logical clusters' full backup waits on a lock. The survivors then own every cluster (3 and 3),
the dead daemon's ``pg_receivewal`` is gone, its blocked run is ``interrupted`` and caught up
(a run with trigger ``catch-up`` succeeds once the lock goes), and every physical cluster's
archive has no gap from its newest full backup to a ``pg_switch_wal()`` after the takeover.

The takeover time (from the kill until the survivors lead every cluster) is printed
(``fleet_takeover_seconds``), never asserted: the machine is shared. Waits poll generously."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from contentflow_backupd.demo.cluster import PgCluster, running_cluster
from contentflow_backupd.ops.wal.archive import check_wal_chain
from contentflow_backupd.procs import process_alive
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.wal import parse_lsn, segment_of_lsn
from tests.conftest import PASSPHRASE
from tests.support.cli import Cli
from tests.support.daemon import Daemon

pytestmark = pytest.mark.pg

WAIT = 420.0
SEGMENT_SIZE = 16 * 1024 * 1024
PHYSICAL = ("p1", "p2", "p3")
LOGICAL = ("l1", "l2", "l3")
CLUSTERS = PHYSICAL + LOGICAL


@pytest.fixture
def six() -> Iterator[dict[str, PgCluster]]:
    with contextlib.ExitStack() as stack:
        clusters: dict[str, PgCluster] = {}
        for name in CLUSTERS:
            conf = {"wal_level": "replica", "max_wal_senders": "10"} if name in PHYSICAL else {}
            pg = stack.enter_context(running_cluster(prefix=f"backupd-failover-{name}-", conf=conf))
            pg.execute(
                "create table items (id bigserial primary key, body text);"
                "insert into items (body) select md5(g::text) from generate_series(1, 300) g"
            )
            clusters[name] = pg
        yield clusters


def owned(d: Daemon) -> set[str]:
    """The clusters ``d`` leads (``backupd_leader{cluster} 1``); empty when it cannot be read."""
    try:
        return {name for name in CLUSTERS if d.metric("backupd_leader", cluster=name) == 1}
    except OSError:
        return set()


def has_full(pg: PgCluster, catalog_db: str, cluster: str) -> bool:
    rows = pg.execute(
        "select 1 from backups where cluster = %s and kind = 'full' and status = 'succeeded'",
        catalog_db,
        params=(cluster,),
    )
    return bool(rows)


def owners_settled(d: Daemon, others: set[str]) -> bool:
    """``cluster_owners`` passes on ``d`` with no cluster being taken over, and every cluster it
    does not own is listed as owned by one of ``others`` (read every probe interval: polled)."""
    doc = json.loads(d.get("/healthz")[1])
    check = next((c for c in doc["checks"] if c["name"] == "cluster_owners"), None)
    elsewhere = {e["cluster"]: e["owner"].split("(")[0] for e in doc.get("owned_elsewhere", [])}
    return (
        check is not None
        and check["ok"]
        and "taken over" not in check["detail"]
        and set(elsewhere) == set(CLUSTERS) - owned(d)
        and set(elsewhere.values()) == others
    )


def is_archived(archive: WalArchive, segment: str) -> bool:
    return segment in archive.names()


def receivewal_children(pid: int) -> list[int]:
    """The ``pg_receivewal`` processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "pg_receivewal" and ppid == pid:
            found.append(int(entry.name))
    return found


class WriteLoop:
    """Rows written to every physical cluster on a thread, until stopped."""

    def __init__(self, clusters: list[PgCluster]) -> None:
        self.clusters = clusters
        self.rows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WriteLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pg in self.clusters:
                with contextlib.suppress(psycopg.Error):
                    pg.execute("insert into items (body) select repeat(md5(random()::text), 200)")
                    self.rows += 1


def test_kill_9_of_one_daemon_moves_its_clusters_with_no_gap(
    six: dict[str, PgCluster], pg: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog_db = pg.create_database()
    base = Path(tempfile.mkdtemp(prefix="backupd-fleet-failover-"))
    daemons: dict[str, Daemon] = {}
    try:
        config = base / "backupd.toml"
        text = (
            f'repository = "file://{base / "repo"}"\n'
            f'catalog_url = "{pg.url(catalog_db)}"\n'
            'shutdown_grace = "5s"\n'
            "[chunking]\navg_size = 65536\n"
            f'[encryption]\npassphrase = "{PASSPHRASE}"\n'
            '[jobs]\nlock_wait_timeout = "10m"\n'
            '[schedule]\nfull = "every 30s"\nincremental = "off"\nretention = "off"\n'
            'verify = "off"\nrestore_test = "off"\nspread = "0s"\n'
        )
        for name in CLUSTERS:
            text += f'[clusters.{name}]\ndatabase_url = "{six[name].url("postgres")}"\n'
            if name in PHYSICAL:
                text += (
                    f'mode = "physical"\n[clusters.{name}.schedule]\nfull = "every 1h"\nwal = "every 5s"\n'
                    f'[clusters.{name}.wal]\nslot = "backupd_{name}"\n'
                )
        config.write_text(text)
        for member in ("d1", "d2", "d3"):
            env = {
                "BACKUPD_CONFIG": str(config),
                "BACKUPD_STATE_DIR": str(base / f"state-{member}"),
                "BACKUPD_FLEET__MEMBER": member,
            }
            daemons[member] = Daemon(env).start()

        # The leases spread the clusters two per daemon (a daemon that claimed more at first
        # gives the excess up after 60 s), and each cluster has its first full backup.
        def spread() -> bool:
            sets = [owned(d) for d in daemons.values()]
            return [len(s) for s in sets] == [2, 2, 2] and set().union(*sets) == set(CLUSTERS)

        daemons["d1"].wait_for("two clusters per daemon", spread, timeout=WAIT)
        for name in CLUSTERS:  # on whichever daemon owned it then
            daemons["d1"].wait_for(
                f"{name}'s first full", functools.partial(has_full, pg, catalog_db, name), timeout=WAIT
            )

        # The victim: a daemon streaming a physical cluster and owning a logical one (with two
        # per daemon and three of each kind, one always does).
        victim_name, victim = next(
            (m, d) for m, d in daemons.items() if owned(d) & set(PHYSICAL) and owned(d) & set(LOGICAL)
        )
        survivors = {m: d for m, d in daemons.items() if m != victim_name}
        victim_clusters = owned(victim)
        blocked = sorted(victim_clusters & set(LOGICAL))[0]
        streamed = sorted(victim_clusters & set(PHYSICAL))
        assert victim.proc is not None
        victim_pid = victim.proc.pid
        victim.wait_for("the victim's pg_receivewal", lambda: receivewal_children(victim_pid), timeout=WAIT)
        receivers = receivewal_children(victim_pid)

        with WriteLoop([six[n] for n in PHYSICAL]) as writes:
            # A session holds a lock the logical cluster's next full backup needs: that run waits.
            locker = psycopg.connect(six[blocked].url("postgres"))
            locker.execute("lock table items in access exclusive mode")
            try:
                victim.wait_for(
                    f"a full backup of {blocked} waiting on the lock",
                    lambda: pg.execute(
                        "select id from runs where cluster = %s and job = 'full' and status = 'running'",
                        catalog_db,
                        params=(blocked,),
                    ),
                    timeout=WAIT,
                )
                victim.wait_for("rows written", lambda: writes.rows >= 20, timeout=WAIT)
                killed_at = time.monotonic()
                victim.signal(signal.SIGKILL)
                victim.wait(30)

                def taken_over() -> bool:
                    sets = [owned(d) for d in survivors.values()]
                    return sorted(len(s) for s in sets) == [3, 3] and set().union(*sets) == set(CLUSTERS)

                next(iter(survivors.values())).wait_for("the takeover", taken_over, timeout=WAIT)
                takeover_s = time.monotonic() - killed_at
                with capsys.disabled():
                    moved = sorted(victim_clusters)
                    print(f"\nfleet_takeover_seconds={takeover_s:.1f} (clusters moved: {moved})")

                # status shows each cluster's owner: a survivor.
                res = Cli(env=next(iter(survivors.values())).env).run("status", "--all-clusters", "--json")
                doc = res.json()
                owners = {c["cluster"]: (c["owner"] or {}).get("member") for c in doc["clusters"]}
                assert set(owners) == set(CLUSTERS) and set(owners.values()) == set(survivors), doc

                # /healthz of a survivor: every cluster has a live owner, the other's listed.
                for member, d in survivors.items():
                    d.wait_for(
                        f"{member}'s /healthz past the takeover",
                        functools.partial(owners_settled, d, set(survivors) - {member}),
                        timeout=WAIT,
                    )

                # Its pg_receivewal died with it (parent-death signal).
                next(iter(survivors.values())).wait_for(
                    "the dead daemon's pg_receivewal gone",
                    lambda: not any(process_alive(p) for p in receivers),
                    timeout=60,
                )
                # Its blocked run is interrupted (reaped by the new owner).
                rows = pg.execute(
                    "select status, daemon_id from runs where cluster = %s and job = 'full' "
                    "and daemon_id like %s order by id",
                    catalog_db,
                    params=(blocked, f"{victim_name}/%"),
                )
                assert rows and rows[-1][0] == "interrupted", rows
            finally:
                locker.close()  # the lock goes: the catch-up can run
            new_owner = next(d for d in survivors.values() if blocked in owned(d))
            new_owner.wait_for(
                f"{blocked}'s catch-up full",
                lambda: pg.execute(
                    "select id from runs where cluster = %s and job = 'full' and trigger = 'catch-up' "
                    "and status = 'succeeded'",
                    catalog_db,
                    params=(blocked,),
                ),
                timeout=WAIT,
            )

        # Every physical cluster: no gap from its newest full backup to a switch after the takeover.
        repo = Repository.open(
            LocalStorage(base / "repo"), KekSecret("passphrase", PASSPHRASE.encode(), "test")
        )
        for name in PHYSICAL:
            server = six[name]
            last = server.execute("select pg_walfile_name(pg_current_wal_lsn())")[0][0]
            server.execute("select pg_switch_wal()")
            archive = WalArchive(repo, name)
            new_owner = next(d for d in survivors.values() if name in owned(d))
            new_owner.wait_for(
                f"{name}'s segment {last} archived",
                functools.partial(is_archived, archive, last),
                timeout=WAIT,
            )
            details = pg.execute(
                "select details from backups where cluster = %s and kind = 'full' and status = 'succeeded' "
                "order by started_at desc limit 1",
                catalog_db,
                params=(name,),
            )[0][0]
            start = segment_of_lsn(parse_lsn(details["start_lsn"]), int(details["timeline"]), SEGMENT_SIZE)
            report = check_wal_chain(archive, start, SEGMENT_SIZE)
            assert report.ok, (name, report.to_json())
        assert streamed  # the victim was archiving WAL when it was killed
    finally:
        for d in daemons.values():
            d.close()
        shutil.rmtree(base, ignore_errors=True)
        pg.drop_database(catalog_db)
