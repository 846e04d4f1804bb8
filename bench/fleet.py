"""The fleet benchmark (issue 18, docs/design/fleet.md step 9): what 1,000 clusters cost the
scheduler and the catalog, not PostgreSQL.

Three parts, each reported as a table and in ``bench/results/fleet.json`` (never a test assertion;
method and results in bench/README.md "The fleet"):

1. **Spread.** Every cluster's jobs with the configured schedules (``0 2 * * *`` fulls,
   ``0 */6 * * *`` incrementals, ``every 1m`` WAL ticks), their triggers built by the daemon's own
   ``scheduling/scheduler.py: build_trigger`` with ``schedule.spread`` (default 30 minutes for
   named clusters) and without it: fires per second in the busiest second and minute, and the
   coefficient of variation of the fires per second over the window against a uniform spread
   (the offsets are hashes of the cluster names, so exact and independent of the machine).
2. **Catalog and takeover.** A PostgreSQL catalog (a cluster started by the bench), ``members``
   daemons' lease engines (``daemon/membership.py: Membership``, run as the daemon runs it, each
   on a catalog connection pool of its own). Reported: the time until every cluster is owned
   and gained at the start, the catalog statements per minute in the steady state (a counter on
   each engine's ``before_cursor_execute``, and the catalog database's ``xact_commit``), the
   tick's time, the owners' spread, and, after one member stops dead (its threads stop, its
   leases stay, as after ``kill -9``), the time until every one of its clusters is owned by a
   survivor and, per cluster, until a survivor's ``on_gain`` (p50, max).
3. **One daemon.** ``Daemon.run`` in a child process per size (``--daemon-sizes``, default 10, 100
   and 1,000 clusters) over ``wiring.Fleet`` with fake logical sources
   (``tests/support/fake_pg.py``), a shared ``file://`` repository on tmpfs, its SQLite catalog
   and compressed schedules: CPU seconds and PSS, catalog statements and runs per minute, the
   delay from each run's planned fire time to its start per class, the warnings and errors it
   logged, the time it takes to stop after SIGTERM; slopes per cluster over the sizes.

    .venv/bin/python bench/fleet.py [--clusters 1000] [--members 3] [--ttl 15] [--poll 5]
        [--daemon-sizes 10,100,1000] [--warmup 150] [--measure 90] [--no-catalog]
"""

from __future__ import annotations

import argparse
import json
import os
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

from contentflow_backupd.daemon.membership import Membership, new_daemon_id  # noqa: E402
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


class TimedMembership(Membership):
    """``Membership`` with every tick timed (the round's time, its catalog calls included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[float] = []

    def tick(self) -> None:
        started = time.perf_counter()
        super().tick()
        self.rounds.append(time.perf_counter() - started)


class Member:
    """One daemon of the fleet: the daemon's own lease engine (``daemon/membership.py:
    Membership``) on a catalog connection pool of its own, run on threads as the daemon runs it
    (``Membership.run``: a tick every ``poll`` seconds, the local deadlines on a watcher).
    on_gain and ``on_lose`` only record when they were called (the bench serves no jobs)."""

    def __init__(
        self, url: str, member: str, clusters: list[str], ttl: float, poll: float, counter: StatementCounter
    ) -> None:
        from contentflow_backupd.catalog.sql import open_catalog

        self.catalog: Any = open_catalog(url)
        counter.attach(self.catalog.engine)
        self.member = member
        self.id = new_daemon_id(member)
        self.gained: dict[str, float] = {}
        """Cluster -> the monotonic time of its last on_gain here."""
        self.lost: dict[str, float] = {}
        self.stop = threading.Event()
        configured = dict.fromkeys(clusters, "digest")
        self.membership = TimedMembership(
            self.catalog,
            member,
            self.id,
            lambda: configured,
            self._on_gain,
            self._on_lose,
            ttl=ttl,
            poll=poll,
            host="bench",
        )
        self._thread: threading.Thread | None = None

    def _on_gain(self, cluster: str, _epoch: int, _catch_up: list[str]) -> None:
        self.gained[cluster] = time.monotonic()

    def _on_lose(self, cluster: str, _reason: str) -> None:
        self.lost[cluster] = time.monotonic()

    @property
    def rounds(self) -> list[float]:
        return self.membership.rounds

    def start(self) -> None:
        """``Membership.run`` on a thread, as the daemon runs it."""
        self._thread = threading.Thread(target=self.membership.run, args=(self.stop,), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_catalog(
    names: list[str], members: int, ttl: float, poll: float, steady_s: float
) -> dict[str, Any]:
    from contentflow_backupd.catalog.sql import open_catalog

    counter = StatementCounter()
    with running_cluster(prefix="backupd-bench-fleet-") as pg:
        db = pg.create_database("bench_fleet")
        url = pg.url(db).replace("postgresql://", "postgresql+psycopg://", 1)
        open_catalog(url).close()  # migrated once
        fleet = [Member(url, f"member-{i}", names, ttl, poll, counter) for i in range(members)]
        reader: Any = open_catalog(url)

        def owned_by(alive: set[str]) -> int:
            return sum(1 for lease in reader.leases() if lease.held and lease.owner in alive)

        started = time.monotonic()
        for m in fleet:
            m.membership.announce()
        for m in fleet:
            m.start()
        all_ids = {m.id for m in fleet}
        wait_until("every cluster owned", lambda: owned_by(all_ids) == len(names), 10 * ttl)
        first_owned_s = time.monotonic() - started
        wait_until("every cluster gained", lambda: sum(len(m.gained) for m in fleet) >= len(names), 10 * ttl)
        first_gained_s = time.monotonic() - started

        def commits() -> int:
            return int(
                pg.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", params=(db,))[0][0]
            )

        count0, xact0, t0 = counter.count, commits(), time.monotonic()
        rounds0 = [len(m.rounds) for m in fleet]
        time.sleep(steady_s)
        count1, xact1, t1 = counter.count, commits(), time.monotonic()
        minutes = (t1 - t0) / 60
        spread = Counter(lease.owner for lease in reader.leases() if lease.held)
        rounds = sorted(r for m, n in zip(fleet, rounds0, strict=True) for r in m.rounds[n:])

        victim = fleet[0]
        victim_clusters = set(victim.membership.held())
        victim.stop.set()  # its ticks and deadline watcher stop, its leases stay: kill -9 as seen
        killed_at = time.monotonic()
        survivors = fleet[1:]
        survivor_ids = {m.id for m in survivors}
        takeover_s = wait_until("takeover", lambda: owned_by(survivor_ids) == len(names), 10 * ttl + 60)

        def started_by_survivor(cluster: str) -> float | None:
            times = [m.gained[cluster] for m in survivors if m.gained.get(cluster, 0.0) > killed_at]
            return min(times) - killed_at if times else None

        wait_until(
            "every taken cluster started",
            lambda: all(started_by_survivor(c) is not None for c in victim_clusters),
            10 * ttl + 60,
        )
        gains = [t for t in (started_by_survivor(c) for c in victim_clusters) if t is not None]
        after = Counter(lease.owner for lease in reader.leases() if lease.held)
        for m in fleet:
            m.stop.set()
        for m in fleet:
            m.join(poll + 30)
        reader.close()
        for m in fleet:
            m.catalog.close()
        return {
            "engine": "daemon/membership.py: Membership",
            "members": members,
            "ttl_s": ttl,
            "poll_s": poll,
            "all_owned_after_start_s": round(first_owned_s, 2),
            "all_gained_after_start_s": round(first_gained_s, 2),
            "statements_per_minute": round((count1 - count0) / minutes),
            "xact_commit_per_minute": round((xact1 - xact0) / minutes),
            "round_ms_p50": round(1000 * statistics.median(rounds), 1) if rounds else None,
            "round_ms_max": round(1000 * rounds[-1], 1) if rounds else None,
            "owners_before": sorted(spread.values()),
            "victim_clusters": len(victim_clusters),
            "takeover_s": round(takeover_s, 2),
            "started_after_kill_s_p50": round(percentile(gains, 0.5), 2) if gains else None,
            "started_after_kill_s_max": round(max(gains), 2) if gains else None,
            "owners_after": sorted(after.values()),
        }


# -- 3. the daemon, in process, over fake sources ------------------------------------------------
DAEMON_SCHEDULES = {
    "incremental": "every 10m",
    "full": "every 1h",
    "verify": "every 30m",
}
"""Compressed schedules (36 times a day's 4 incrementals and one full). Logical mode: its
clusters have no WAL job (a physical cluster's WAL tick asks its server, which no fake stands
for), so the WAL class is not measured here."""
DAEMON_SPREAD = "30m"
PAD = 20_000
"""Bytes of padding in each fake dump (one chunk or two: the bench measures the scheduler)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_WAIT = 300.0
"""Beyond the warm-up and the measure, how long a daemon gets to stop before it is killed."""


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """PSS and RSS of a process in KiB (``/proc/<pid>/smaps_rollup``)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            out[key.lower()] = int(rest.split()[0])
    return out


def daemon_config(workdir: Path, names: list[str]) -> Path:
    """Every cluster in one shared ``file://`` repository (the cluster name is the prefix), a
    SQLite catalog in the state directory, no HTTP, no WAL socket, compressed schedules."""
    schedule = "".join(f'{job} = "{spec}"\n' for job, spec in DAEMON_SCHEDULES.items())
    # a key file, not a passphrase: each cluster's App opens the repository itself, and a
    # passphrase costs one scrypt per cluster at start-up (bench/README.md "The fleet")
    key = workdir / "repository.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    text = (
        f'repository = "file://{workdir / "repo"}"\n'
        f'state_dir = "{workdir / "state"}"\n'
        'http = { listen = "off" }\n'
        f'encryption = {{ key_file = "{key}" }}\n'
        '[wal]\nsocket = "off"\n'
        f'[schedule]\n{schedule}retention = "off"\nrestore_test = "off"\nspread = "{DAEMON_SPREAD}"\n'
    )
    for name in names:
        # nothing listens there: the fakes stand for the server, nothing connects
        text += f'[clusters.{name}]\ndatabase_url = "postgresql://app@127.0.0.1:1/{name}"\n'
    path = workdir / "backupd.toml"
    path.write_text(text)
    return path


def logged_problems(path: Path) -> dict[str, int]:
    """How many lines of each event the daemon logged at warning or error (``database is
    locked`` start failures, verify faults...): a figure is only true with its trouble beside it."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("warning", "error", "critical"):
            counts[str(entry.get("event"))] += 1
    return dict(counts.most_common())


class JobTimes:
    """What each run of a scheduled job did, recorded by a wrapper around the handlers the
    daemon installs (``scheduling.jobs.install``): its class, the delay from its planned fire time
    to the start of its run, and when it ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delays: list[tuple[float, str, float]] = []
        """(monotonic start, class, seconds from the planned fire time to the start)."""
        self.done: set[tuple[str, str]] = set()
        """(cluster, job) of every run ended."""

    def install(self) -> None:
        from contentflow_backupd.scheduling import jobs
        from contentflow_backupd.scheduling.pool import CLASS_NAMES, job_class

        original = jobs.install

        def install(handler: Any, cluster: str | None = None) -> None:
            if handler is None:
                original(None, cluster)
                return

            def timed(job: str, trigger: Any) -> None:
                # the executor's planned fire time of this run (jobs.set_scheduled_time)
                planned = getattr(jobs._local, "scheduled", None)
                began = time.monotonic()
                if planned is not None:
                    delay = (datetime.now(UTC) - planned).total_seconds()
                    with self.lock:
                        self.delays.append((began, CLASS_NAMES[job_class(job)], delay))
                try:
                    handler(job, trigger)
                finally:
                    with self.lock:
                        self.done.add((cluster or "", job))

            original(timed, cluster)

        jobs.install = install


def daemon_child(count: int, warmup_s: float, measure_s: float, out: Path, workdir: Path) -> int:
    """In the child process: a daemon serving ``count`` clusters over fakes; once every cluster's
    first full backup has ended (at most ``warmup_s``), its CPU, memory, catalog statements and
    start delays over ``measure_s``; the figures go to ``out``, then a SIGTERM stops it."""
    import signal

    from sqlalchemy.engine import Engine

    from contentflow_backupd.daemon.lifecycle import Daemon
    from contentflow_backupd.observability.logging import configure_logging
    from contentflow_backupd.settings import load_settings
    from contentflow_backupd.wiring.app import App
    from contentflow_backupd.wiring.fleet import Fleet
    from tests.support.fake_pg import Content, FakeLogicalSource

    class BenchApp(App):
        """A cluster's ``App`` whose server is a fake: its dump is ``FakeLogicalSource``'s, its
        probe always answers."""

        def logical_source(self) -> Any:
            return FakeLogicalSource(Content(), database=self.cluster, pad=PAD)

        def database_probe(self) -> Any:
            return lambda: None

    class BenchFleet(Fleet):
        def app(self, name: str) -> App:
            if name not in self._apps:
                self._apps[name] = BenchApp(self._settings.for_cluster(self.require(name)), self._file_data)
            return self._apps[name]

    log_file = (workdir / "daemon.log").open("w")
    configure_logging("json", "info", stream=log_file)  # as a daemon logs, to a file
    baseline = memory_kib()
    statements = StatementCounter()
    statements.attach(Engine)  # every engine of the process: the daemon's catalog and job stores
    times = JobTimes()
    times.install()
    names = cluster_names(count)
    settings, data = load_settings(daemon_config(workdir, names), secret_dirs=[workdir / "no-secrets"])
    fleet = BenchFleet(settings, data)
    daemon = Daemon(fleet)
    result: dict[str, Any] = {"clusters": count, "baseline_pss_kib": baseline["pss"]}

    def measure() -> None:
        try:
            started = time.monotonic()

            def running() -> int:
                return sum(1 for r in list(daemon.runtimes.values()) if r.state == "running")

            # until every cluster runs and has ended its first full, at most warmup_s: a daemon
            # too slow for that is measured as it is, with the clusters running said
            fulls = 0
            while time.monotonic() - started < warmup_s:
                if "start_s" not in result and daemon.started and running() == count:
                    result["start_s"] = round(time.monotonic() - started, 1)
                with times.lock:
                    fulls = sum(1 for _, job in times.done if job == "full")
                if fulls >= count:
                    break
                time.sleep(0.5)
            result.setdefault("start_s", None)
            result["first_fulls_done"] = fulls
            result["first_fulls_s"] = round(time.monotonic() - started, 1)
            result["running_at_start_of_measure"] = running()
            cpu0, statements0, t0 = cpu_seconds(), statements.count, time.monotonic()
            time.sleep(measure_s)
            cpu1, statements1, t1 = cpu_seconds(), statements.count, time.monotonic()
            memory = memory_kib()
            minutes = (t1 - t0) / 60
            with times.lock:
                window = [(cls, delay) for began, cls, delay in times.delays if t0 <= began < t1]
            delays: dict[str, Any] = {}
            for cls in ("wal", "backup", "maintenance"):
                values = [d for c, d in window if c == cls]
                delays[cls] = {
                    "runs": len(values),
                    "p50_s": round(percentile(values, 0.5), 2) if values else None,
                    "p95_s": round(percentile(values, 0.95), 2) if values else None,
                    "max_s": round(max(values), 2) if values else None,
                }
            result.update(
                measured_s=round(t1 - t0, 1),
                cpu_s_per_minute=round((cpu1 - cpu0) / minutes, 2),
                pss_kib=memory["pss"],
                rss_kib=memory["rss"],
                threads=threading.active_count(),
                running_at_end_of_measure=running(),
                catalog_statements_per_minute=round((statements1 - statements0) / minutes),
                runs_per_minute=round(len(window) / minutes, 1),
                cpu_s_per_run=round((cpu1 - cpu0) / len(window), 3) if window else None,
                start_delay=delays,
            )
            log_file.flush()
            result["errors_logged"] = logged_problems(workdir / "daemon.log")
        except Exception as exc:  # reported by the parent
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["sigterm_at"] = time.time()
        out.write_text(json.dumps(result, indent=2) + "\n")
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon records it and stops

    threading.Thread(target=measure, name="bench-measure", daemon=True).start()
    code = daemon.run()
    fleet.close()
    log_file.close()
    return code


def measure_daemon(count: int, warmup_s: float, measure_s: float) -> dict[str, Any]:
    """One daemon serving ``count`` clusters, in a child process of its own (a clean memory
    baseline), its files on tmpfs when there is one."""
    import subprocess
    import tempfile

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="backupd-bench-fleetd-", dir=base) as tmp:
        workdir = Path(tmp)
        out = workdir / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--daemon-child",
            str(count),
            "--warmup",
            str(warmup_s),
            "--measure",
            str(measure_s),
            "--out",
            str(out),
            "--workdir",
            str(workdir),
        ]
        child = subprocess.Popen(command)
        deadline = time.monotonic() + warmup_s + measure_s + STOP_WAIT
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        gone_at = time.time()
        killed = child.poll() is None
        if killed:
            child.kill()
            child.wait()
        if not out.exists():
            raise RuntimeError(f"the daemon of {count} clusters left no figures (exit {child.returncode})")
        result: dict[str, Any] = json.loads(out.read_text())
        result["exit_code"] = child.returncode
        result["killed"] = killed
        # from the SIGTERM to the process gone
        sent = result.get("sigterm_at")
        result["stop_s"] = None if killed or sent is None else round(gone_at - sent, 1)
        if "error" in result:
            raise RuntimeError(f"the daemon of {count} clusters: {result['error']}")
        return result


def slope(points: list[dict[str, Any]], key: str) -> float | None:
    """The least-squares slope of ``key`` per cluster over the runs."""
    xs = [float(p["clusters"]) for p in points]
    ys = [float(p[key]) for p in points]
    if len(xs) < 2:
        return None
    return statistics.linear_regression(xs, ys).slope


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
    parser.add_argument(
        "--daemon-sizes",
        default="10,100,1000",
        help="clusters of each in-process daemon measured, comma-separated; empty: none",
    )
    parser.add_argument(
        "--warmup", type=float, default=150.0, help="at most this long for every cluster's first full"
    )
    parser.add_argument("--measure", type=float, default=90.0, help="seconds each daemon is measured")
    parser.add_argument("--no-catalog", action="store_true", help="skip the lease part (no PostgreSQL)")
    parser.add_argument("--daemon-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.daemon_child is not None:
        return daemon_child(args.daemon_child, args.warmup, args.measure, args.out, args.workdir)
    from contentflow_backupd.observability.logging import configure_logging

    configure_logging("console", "warning")  # the members' info lines (a gain per cluster) stay out
    names = cluster_names(args.clusters)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "clusters": args.clusters,
        "spread_s": args.spread,
        "spread": measure_spread(names, args.spread),
    }
    if not args.no_catalog:
        result["catalog"] = measure_catalog(names, args.members, args.ttl, args.poll, args.steady)
    sizes = [int(n) for n in args.daemon_sizes.split(",") if n.strip()]
    if sizes:
        points = [measure_daemon(n, args.warmup, args.measure) for n in sizes]
        result["daemon"] = {
            "schedules": {**DAEMON_SCHEDULES, "spread": DAEMON_SPREAD},
            "runs": points,
            "cpu_s_per_minute_per_cluster": _round(slope(points, "cpu_s_per_minute"), 5),
            "pss_kib_per_cluster": _round(slope(points, "pss_kib"), 1),
            "catalog_statements_per_minute_per_cluster": _round(
                slope(points, "catalog_statements_per_minute"), 2
            ),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nresults: {RESULTS}")
    return 0


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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
    c = result.get("catalog")
    lines += (
        []
        if c is None
        else [
            "",
            f"catalog: {c['members']} members, lease TTL {c['ttl_s']:.0f} s,"
            f" renewal every {c['poll_s']:.0f} s",
            f"- every cluster owned {c['all_owned_after_start_s']} s after the members announced;"
            f" owners {c['owners_before']}",
            f"- steady state: {c['statements_per_minute']} statements/min,"
            f" {c['xact_commit_per_minute']} commits/min;"
            f" a member's round p50 {c['round_ms_p50']} ms, max {c['round_ms_max']} ms",
            f"- every cluster gained (on_gain) {c['all_gained_after_start_s']} s after the start",
            f"- one member stopped dead holding {c['victim_clusters']} clusters: all owned by the survivors"
            f" after {c['takeover_s']} s; each started by a survivor (on_gain) after"
            f" p50 {c['started_after_kill_s_p50']} s, max {c['started_after_kill_s_max']} s;"
            f" owners {c['owners_after']}",
        ]
    )
    d = result.get("daemon")
    if d is not None:
        lines += [
            "",
            "one daemon over fake sources, schedules "
            + ", ".join(f"{job} {spec}" for job, spec in d["schedules"].items()),
            "",
            "| clusters | all started after | first fulls ended | running (measure start/end) |"
            " CPU s/min | CPU s per run | PSS MiB | catalog statements/min | runs/min |"
            " start delay p50 / p95 / max (runs): backup | maintenance |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in d["runs"]:
            delays = [
                f"{x['p50_s']} / {x['p95_s']} / {x['max_s']} s ({x['runs']})" if x["runs"] else "-"
                for x in (r["start_delay"][c] for c in ("backup", "maintenance"))
            ]
            started = (
                f"{r['start_s']} s" if r["start_s"] is not None else f"not within {r['first_fulls_s']} s"
            )
            lines.append(
                f"| {r['clusters']} | {started} | {r['first_fulls_done']} in {r['first_fulls_s']} s |"
                f" {r['running_at_start_of_measure']} / {r['running_at_end_of_measure']} |"
                f" {r['cpu_s_per_minute']} | {r['cpu_s_per_run']} | {r['pss_kib'] / 1024:.0f} |"
                f" {r['catalog_statements_per_minute']} | {r['runs_per_minute']} | "
                + " | ".join(delays)
                + " |"
            )
        for r in d["runs"]:
            problems = ", ".join(f"{event} x{n}" for event, n in r.get("errors_logged", {}).items())
            stop = (
                "not within the bench's wait (--warmup + --measure + 300 s from its start), killed"
                if r.get("killed")
                else f"{r.get('stop_s')} s, exit {r.get('exit_code')}"
            )
            lines.append(
                f"{r['clusters']} clusters: stop after SIGTERM {stop};"
                f" logged warnings and errors: {problems or 'none'}"
            )
        lines.append(
            f"per cluster (slope): {d['cpu_s_per_minute_per_cluster']} CPU s/min,"
            f" {d['pss_kib_per_cluster']} KiB PSS,"
            f" {d['catalog_statements_per_minute_per_cluster']} catalog statements/min"
        )
    m = result["machine"]
    lines += ["", f"machine: {m['nproc']} CPUs ({m['cpu_model']}), load {m['load']} at the start (shared)"]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
