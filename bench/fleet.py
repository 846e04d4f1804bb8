"""The fleet benchmark (issue 18, docs/design/fleet.md step 9): what 1,000 clusters cost the
scheduler and the catalog, not PostgreSQL.

Two parts, each reported as a table and in ``bench/results/fleet.json`` (never a test assertion):

1. **Spread.** Every cluster's jobs with the configured schedules (``0 2 * * *`` fulls,
   ``0 */6 * * *`` incrementals, ``every 1m`` WAL ticks), their triggers built by the daemon's own
   ``scheduling/scheduler.py: build_trigger`` with ``schedule.spread`` (default 30 minutes for
   named clusters) and without it: fires per second in the busiest second and minute, and the
   coefficient of variation of the fires per second over the window against a uniform spread
   (the offsets are hashes of the cluster names, so exact and independent of the machine).
2. **Catalog and takeover.** A PostgreSQL catalog (a cluster started by the bench), ``members``
   daemons (threads, each with its own catalog connection pool, as separate processes would
   have) that announce all the clusters and every ``poll`` seconds run the fleet's renewal round:
   ``heartbeat_and_renew``, ``live_daemons``, ``leases``, ``assign`` and ``claim`` of the free
   clusters assigned to them (``daemon/membership.py`` when present, else the same round written
   here over ``catalog/fleet.py: SqlFleet``). Reported: the time until every cluster is owned at
   the start, the catalog statements per minute in the steady state (a counter on each engine's
   ``before_cursor_execute``, and the catalog database's ``xact_commit``), the owners' spread,
   and, after one member stops renewing (its thread stops dead, as after ``kill -9``), the time
   until every one of its clusters is owned by a survivor (the lease TTL bounds it from below).

    .venv/bin/python bench/fleet.py [--clusters 1000] [--members 3] [--ttl 15] [--poll 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from contentflow_backupd.daemon.assign import assign  # noqa: E402
from contentflow_backupd.demo.cluster import running_cluster  # noqa: E402
from contentflow_backupd.scheduling.scheduler import JobSpec, build_trigger  # noqa: E402
from contentflow_backupd.timespec import parse_schedule  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet.json"
SCHEDULES = {"full": "0 2 * * *", "incremental": "0 */6 * * *", "wal": "every 1m"}


def cluster_names(count: int) -> list[str]:
    return [f"pg-{i:04d}" for i in range(count)]


# -- 1. spread ---------------------------------------------------------------------------------
def first_fires(names: list[str], job: str, spread_s: float, after: datetime) -> list[datetime]:
    """Each cluster's first fire of ``job`` after ``after``, from the daemon's own triggers."""
    schedule = parse_schedule(SCHEDULES[job])
    out = []
    for name in names:
        spec = JobSpec(job, schedule, f"BACKUPD_SCHEDULE__{job.upper()}", cluster=name, spread_s=spread_s)
        fire = build_trigger(spec, "UTC").get_next_fire_time(None, after)
        assert fire is not None
        out.append(fire)
    return out


def spread_figures(fires: list[datetime], window_s: float) -> dict[str, Any]:
    """The busiest second and minute, and the CV of fires per second over the window (the
    seconds from the first fire to ``window_s`` later) against a uniform spread."""
    start = min(fires)
    seconds = Counter(int((f - start).total_seconds()) for f in fires)
    minutes = Counter(int((f - start).total_seconds()) // 60 for f in fires)
    width = max(1, int(window_s))
    per_second = [seconds.get(s, 0) for s in range(width)]
    mean = statistics.fmean(per_second)
    cv = statistics.pstdev(per_second) / mean if mean else 0.0
    uniform = len(fires) / width
    # a perfectly even spread of n fires over w seconds has CV sqrt(frac*(1-frac))/mean at best;
    # a random (Poisson) one has about 1/sqrt(mean): the hash should look like the latter
    return {
        "fires": len(fires),
        "window_s": width,
        "max_per_second": max(seconds.values()),
        "max_per_minute": max(minutes.values()),
        "uniform_per_second": round(uniform, 3),
        "cv_per_second": round(cv, 3),
        "cv_poisson": round(1 / uniform**0.5, 3) if uniform else None,
        "last_fire_after_s": round((max(fires) - start).total_seconds(), 1),
    }


def measure_spread(names: list[str], spread_s: float) -> dict[str, Any]:
    after = datetime(2026, 12, 8, 0, 0, tzinfo=UTC)
    out: dict[str, Any] = {}
    for job in SCHEDULES:
        window = min(spread_s, 60.0) if job == "wal" else spread_s
        out[job] = {
            "spread": spread_figures(first_fires(names, job, spread_s, after), window),
            "no_spread": spread_figures(first_fires(names, job, 0.0, after), 1.0),
        }
    return out


# -- 2. catalog and takeover -------------------------------------------------------------------
class StatementCounter:
    """Counts the statements an engine sends (``before_cursor_execute``)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1


class Member:
    """One daemon of the fleet, reduced to its renewal round (the design's step 8 timing)."""

    def __init__(
        self, url: str, member: str, clusters: list[str], ttl: float, counter: StatementCounter
    ) -> None:
        from contentflow_backupd.catalog.sql import open_catalog

        self.catalog: Any = open_catalog(url)
        counter.attach(self.catalog.engine)
        self.member = member
        self.id = f"{member}/bench"
        self.clusters = clusters
        self.ttl = ttl
        self.held: dict[str, int] = {}
        self.stop = threading.Event()
        self.rounds: list[float] = []

    def announce(self) -> None:
        self.catalog.announce(
            self.id,
            member=self.member,
            host="bench",
            pid=0,
            version="bench",
            clusters=dict.fromkeys(self.clusters, "digest"),
            ttl_s=self.ttl,
        )

    def tick(self) -> None:
        started = time.perf_counter()
        self.held = self.catalog.heartbeat_and_renew(self.id, self.ttl)
        live = {d.member: list(d.clusters) for d in self.catalog.live_daemons()}
        leases = self.catalog.leases()
        owners = {lease.cluster: lease.owner.split("/")[0] for lease in leases if lease.held and lease.owner}
        mine = [c for c, m in assign(live, owners).items() if m == self.member and c not in owners]
        if mine:
            self.held.update(self.catalog.claim(self.id, mine, self.ttl))
        self.rounds.append(time.perf_counter() - started)

    def loop(self, poll: float) -> None:
        while not self.stop.wait(poll):
            self.tick()


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def measure_catalog(
    names: list[str], members: int, ttl: float, poll: float, steady_s: float
) -> dict[str, Any]:
    from contentflow_backupd.catalog.sql import open_catalog

    counter = StatementCounter()
    with running_cluster(prefix="backupd-bench-fleet-") as pg:
        db = pg.create_database("bench_fleet")
        url = pg.url(db).replace("postgresql://", "postgresql+psycopg://", 1)
        open_catalog(url).close()  # migrated once
        fleet = [Member(url, f"member-{i}", names, ttl, counter) for i in range(members)]
        reader: Any = open_catalog(url)

        def owned_by(alive: set[str]) -> int:
            return sum(1 for lease in reader.leases() if lease.held and lease.owner in alive)

        started = time.monotonic()
        for m in fleet:
            m.announce()
        threads = [threading.Thread(target=m.loop, args=(poll,), daemon=True) for m in fleet]
        for m in fleet:
            m.tick()
        for t in threads:
            t.start()
        all_ids = {m.id for m in fleet}
        wait_until("every cluster owned", lambda: owned_by(all_ids) == len(names), 10 * ttl)
        first_owned_s = time.monotonic() - started

        def commits() -> int:
            return int(
                pg.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", params=(db,))[0][0]
            )

        count0, xact0, t0 = counter.count, commits(), time.monotonic()
        time.sleep(steady_s)
        count1, xact1, t1 = counter.count, commits(), time.monotonic()
        minutes = (t1 - t0) / 60
        spread = Counter(lease.owner for lease in reader.leases() if lease.held)
        rounds = sorted(r for m in fleet for r in m.rounds)

        victim = fleet[0]
        victim.stop.set()  # stops renewing at once, holding its leases: a kill -9 as the catalog sees it
        victim_clusters = set(victim.held)
        killed_at = time.monotonic()
        survivors = {m.id for m in fleet[1:]}
        takeover_s = wait_until("takeover", lambda: owned_by(survivors) == len(names), 10 * ttl + 60)
        after = Counter(lease.owner for lease in reader.leases() if lease.held)
        for m in fleet[1:]:
            m.stop.set()
        for t in threads:
            t.join(timeout=poll + 30)
        reader.close()
        for m in fleet:
            m.catalog.close()
        return {
            "members": members,
            "ttl_s": ttl,
            "poll_s": poll,
            "all_owned_after_start_s": round(first_owned_s, 2),
            "statements_per_minute": round((count1 - count0) / minutes),
            "xact_commit_per_minute": round((xact1 - xact0) / minutes),
            "round_ms_p50": round(1000 * statistics.median(rounds), 1) if rounds else None,
            "round_ms_max": round(1000 * rounds[-1], 1) if rounds else None,
            "owners_before": sorted(spread.values()),
            "victim_clusters": len(victim_clusters),
            "takeover_s": round(takeover_s, 2),
            "takeover_after_kill_s": round(time.monotonic() - killed_at, 2),
            "owners_after": sorted(after.values()),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=15.0)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--spread", type=float, default=1800.0, help="schedule.spread in seconds")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state measured")
    args = parser.parse_args(argv)
    names = cluster_names(args.clusters)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "clusters": args.clusters,
        "spread_s": args.spread,
        "spread": measure_spread(names, args.spread),
        "catalog": measure_catalog(names, args.members, args.ttl, args.poll, args.steady),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nresults: {RESULTS}")
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"fleet benchmark, {result['clusters']} clusters, spread {result['spread_s']:.0f} s", ""]
    lines.append(
        "| job | spread | busiest second | busiest minute | CV per second (Poisson) | last fire after |"
    )
    lines.append("|---|---|---:|---:|---:|---:|")
    for job, both in result["spread"].items():
        for label in ("spread", "no_spread"):
            f = both[label]
            cv = f"{f['cv_per_second']} ({f['cv_poisson']})" if label == "spread" else "-"
            lines.append(
                f"| {job} | {'on' if label == 'spread' else 'off'} | {f['max_per_second']} | "
                f"{f['max_per_minute']} | {cv} | {f['last_fire_after_s']} s |"
            )
    c = result["catalog"]
    lines += [
        "",
        f"catalog: {c['members']} members, lease TTL {c['ttl_s']:.0f} s, renewal every {c['poll_s']:.0f} s",
        f"- every cluster owned {c['all_owned_after_start_s']} s after the members announced;"
        f" owners {c['owners_before']}",
        f"- steady state: {c['statements_per_minute']} statements/min,"
        f" {c['xact_commit_per_minute']} commits/min;"
        f" a member's round p50 {c['round_ms_p50']} ms, max {c['round_ms_max']} ms",
        f"- one member stopped dead holding {c['victim_clusters']} clusters: all owned by the survivors"
        f" after {c['takeover_s']} s; owners {c['owners_after']}",
    ]
    _ = report  # the machine description comes with the daemon part (next step)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
