"""Reload on SIGHUP: re-read the configuration, refuse it whole or apply it per cluster.

The signal handler only records SIGHUP (``signals.SignalWatch``); the signal-watch thread calls
``Reloader.request()``, which sets a flag; the daemon's main loop calls ``Reloader.poll()``,
which starts at most one ``config-reload`` thread, so the main loop (and the watchdog) never
waits for a reload. SIGHUPs that arrive while a reload runs coalesce into exactly one more;
once the daemon is stopping they are ignored.

The reload thread calls ``ReloadSource.load()`` (given by the ``run`` command: it re-reads the
TOML file and the credential files, and builds each cluster's ``DaemonApp``; the daemon imports
neither ``wiring`` nor ``settings``). Then:

- **refused** (``config_reload_refused``, ``backupd_config_reloads_total{result="refused"}``):
  ``load()`` raised (an invalid file: the ``ConfigError``'s message, which names the setting
  and holds no secret), or a daemon-level setting changed (``Configuration.daemon_keys``: the
  catalog, state directory, listener... need a restart). The old configuration keeps running.
- **applied** (``config_reloaded``, ``result="applied"``): ``plan_reload(old, new)`` compares
  the clusters by digest, and the ``ReloadTarget`` (the daemon) stops the removed clusters,
  restarts the changed ones (stop, then start with the new ``DaemonApp``), re-registers the
  jobs of those whose schedule alone changed, and starts the added ones; the new settings are
  audited (``ops/audit.py: record_config``, as at start-up).
- **failed** (``result="failed"``): a target call raised for some cluster
  (``config_reload_cluster_failed``); the others are applied. The failed cluster keeps its old
  entry in the current configuration, so the next reload plans it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from contentflow_backupd.errors import BackupdError

if TYPE_CHECKING:
    from contentflow_backupd.daemon.parts import DaemonApp
    from contentflow_backupd.observability.metrics import Metrics

log = structlog.get_logger(__name__)

__all__ = [
    "ClusterConfig",
    "Configuration",
    "ReloadPlan",
    "ReloadSource",
    "ReloadTarget",
    "Reloader",
    "plan_reload",
]


@dataclass(frozen=True)
class ClusterConfig:
    """What a reload compares of one cluster: the digests of its settings but the schedule, and
    of its schedule (``wiring/digest.py``; the schedule includes its time zone and spread)."""

    settings_digest: str
    schedule_digest: str


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does, each list sorted: clusters to start, to stop, whose jobs to
    re-register, to restart. A cluster is in at most one list; an unchanged one in none."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rescheduled: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.rescheduled or self.restarted)


def plan_reload(old: Mapping[str, ClusterConfig], new: Mapping[str, ClusterConfig]) -> ReloadPlan:
    """Compare two configurations' clusters (name -> ``ClusterConfig``): a cluster only in
    ``new`` is added, only in ``old`` removed; in both, a change of the schedule alone
    reschedules it, any other change (with or without the schedule's) restarts it."""
    both = old.keys() & new.keys()
    return ReloadPlan(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        rescheduled=tuple(
            sorted(
                n
                for n in both
                if old[n].settings_digest == new[n].settings_digest
                and old[n].schedule_digest != new[n].schedule_digest
            )
        ),
        restarted=tuple(sorted(n for n in both if old[n].settings_digest != new[n].settings_digest)),
    )


def _close_nothing() -> None:
    return None


@dataclass(frozen=True)
class Configuration:
    """A loaded configuration, as the daemon sees it (filled by ``wiring/reload.py``).

    ``clusters``: each configured cluster's digests. ``daemon_keys``: each daemon-level setting
    (environment name) -> the digest of its value, never the value. ``app(name)``: the cluster's
    ``DaemonApp`` (built when asked). ``audit_view``: the settings as the audit trail records
    them at start-up (name -> value, secrets masked). ``close()``: release what the apps opened
    (called for a refused configuration only: an applied one's apps serve the clusters)."""

    clusters: Mapping[str, ClusterConfig]
    daemon_keys: Mapping[str, str]
    app: Callable[[str], DaemonApp]
    audit_view: Mapping[str, str] = field(default_factory=dict)
    close: Callable[[], None] = _close_nothing


@dataclass(frozen=True)
class ReloadSource:
    """Given by the ``run`` command: the configuration the daemon started with, and how to load
    the configuration again (``load()`` re-reads the TOML file and the credential files; it
    raises ``ConfigError`` for an invalid one)."""

    current: Configuration
    load: Callable[[], Configuration]


class ReloadTarget(Protocol):
    """What applies a reload: the daemon. Each call is about one cluster and returns when done.

    ``start_cluster``: start serving ``name`` with ``app`` (added, or restarted after a stop).
    ``stop_cluster``: stop serving ``name``: unschedule its jobs, let a running one finish
    within ``grace_s`` (None: the shutdown grace), stop its WAL work, drop its series; its
    backups, runs and repository stay. ``reschedule_cluster``: re-register ``name``'s jobs from
    ``app`` (unchanged triggers keep their next fire time). Any of them may raise: that cluster
    is logged ``config_reload_cluster_failed`` and planned again at the next reload, so each
    call must be idempotent (stopping a cluster not served does nothing; a restart whose start
    failed is a stop, then a start, again)."""

    def start_cluster(self, name: str, app: DaemonApp) -> None: ...

    def stop_cluster(self, name: str, *, grace_s: float | None = None) -> None: ...

    def reschedule_cluster(self, name: str, app: DaemonApp) -> None: ...

    # Optional: ``reload_refusal(plan) -> str | None``, why this target cannot apply ``plan``
    # (the reload is then refused whole, with that reason); looked up with ``getattr``.


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: ``result`` (applied, refused, failed), the plan (empty when
    refused), the clusters whose change failed, and the refusal's reason."""

    result: str
    plan: ReloadPlan = ReloadPlan()
    failed: tuple[str, ...] = ()
    reason: str | None = None


class Reloader:
    """Owns the "reload requested" flag and the ``config-reload`` thread (module docstring).

    ``source`` None: this daemon cannot reload (SIGHUP is not watched: ``on_reload`` is None).
    ``target`` None: nothing can be applied yet, so only a reload that changes no cluster is
    applied; any other is refused, saying so (set ``target`` to the daemon to apply them).
    ``audit(view)`` records the applied configuration (``record_config``)."""

    def __init__(
        self,
        source: ReloadSource | None,
        *,
        metrics: Metrics,
        stopping: threading.Event,
        target: ReloadTarget | None = None,
        audit: Callable[[Mapping[str, str]], object] | None = None,
    ) -> None:
        self._source = source
        self.current: Configuration | None = source.current if source is not None else None
        """The configuration running: the start's, then each applied one's."""
        self.target = target
        self._metrics = metrics
        self._stopping = stopping
        self._audit = audit
        self._requested = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: ReloadResult | None = None
        """What the newest reload did (None: none yet)."""

    @property
    def on_reload(self) -> Callable[[int], None] | None:
        """For ``SignalWatch(on_reload=...)``: None when this daemon cannot reload."""
        return self.request if self._source is not None else None

    def request(self, _signum: int = 0) -> None:
        """A reload was asked for (on the signal-watch thread: only sets a flag)."""
        if not self._stopping.is_set():
            self._requested.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> bool:
        """From the main loop: start the ``config-reload`` thread when a reload was asked for
        and none runs (the flag is cleared first, so a SIGHUP during this reload asks for one
        more). Returns whether it started one. Never blocks."""
        if self._source is None or self._stopping.is_set() or self.running or not self._requested.is_set():
            return False
        self._requested.clear()
        self._thread = threading.Thread(target=self.reload, name="config-reload", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a running reload (at shutdown); True when none runs any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def reload(self) -> ReloadResult:
        """Load, check and apply the configuration once (the ``config-reload`` thread's body;
        tests call it directly). Never raises."""
        assert self._source is not None and self.current is not None
        log.info("config_reload_started")
        try:
            new = self._source.load()
        except BackupdError as exc:
            return self._refuse(exc.message, exc.hint)
        except Exception as exc:  # noqa: BLE001 - a reload must never end the daemon
            return self._refuse(f"{type(exc).__name__}: {exc}", None)
        old = self.current
        changed = sorted(
            k
            for k in old.daemon_keys.keys() | new.daemon_keys.keys()
            if old.daemon_keys.get(k) != new.daemon_keys.get(k)
        )
        if changed:
            return self._refuse(
                f"daemon-level settings changed: {', '.join(changed)}",
                "these apply at start only: restart the daemon (systemctl restart) to change them",
                new,
            )
        plan = plan_reload(old.clusters, new.clusters)
        if self._stopping.is_set():
            return self._refuse("the daemon is stopping", None, new)
        if not plan.empty and self.target is None:
            return self._refuse(
                "this daemon cannot apply a change of its clusters without a restart yet",
                "restart the daemon (systemctl restart) to apply it",
                new,
            )
        refusal = getattr(self.target, "reload_refusal", None)
        reason = refusal(plan) if callable(refusal) and not plan.empty else None
        if reason is not None:
            return self._refuse(reason, "restart the daemon (systemctl restart) to apply it", new)
        failed = self._apply(plan, old, new)
        if plan.empty:
            _quietly("config_close_failed", new.close)  # unused: the running configuration stays
        else:
            clusters = dict(new.clusters)
            for name in failed:  # planned again at the next reload
                if name in old.clusters:
                    clusters[name] = old.clusters[name]
                else:
                    clusters.pop(name, None)
            self.current = Configuration(
                clusters=clusters,
                daemon_keys=new.daemon_keys,
                app=new.app,
                audit_view=new.audit_view,
                close=new.close,
            )
        result = "failed" if failed else "applied"
        self._metrics.config_reloaded(result)
        (log.warning if failed else log.info)(
            "config_reloaded",
            result=result,
            added=list(plan.added),
            removed=list(plan.removed),
            rescheduled=list(plan.rescheduled),
            restarted=list(plan.restarted),
            failed=list(failed),
            unchanged=len(new.clusters.keys() & old.clusters.keys())
            - len(plan.rescheduled)
            - len(plan.restarted),
        )
        if self._audit is not None:
            audit, view = self._audit, new.audit_view
            _quietly("config_audit_failed", lambda: audit(view))
        self.last = ReloadResult(result, plan, tuple(failed))
        return self.last

    def _apply(self, plan: ReloadPlan, old: Configuration, new: Configuration) -> list[str]:
        """Removed first (freeing what they hold), then restarted, rescheduled, added. Returns
        the clusters whose call raised."""
        target = self.target
        failed: list[str] = []
        if target is None:
            return failed

        def each(names: tuple[str, ...], action: str, call: Callable[[str], None]) -> None:
            for name in names:
                try:
                    call(name)
                except Exception as exc:  # noqa: BLE001 - one cluster's trouble is its own
                    message = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
                    log.error("config_reload_cluster_failed", cluster=name, action=action, error=message)
                    failed.append(name)

        def restart(name: str) -> None:
            target.stop_cluster(name)
            target.start_cluster(name, new.app(name))

        each(plan.removed, "stop", lambda name: target.stop_cluster(name))
        each(plan.restarted, "restart", restart)
        each(plan.rescheduled, "reschedule", lambda name: target.reschedule_cluster(name, new.app(name)))
        each(plan.added, "start", lambda name: target.start_cluster(name, new.app(name)))
        return failed

    def _refuse(self, reason: str, hint: str | None, new: Configuration | None = None) -> ReloadResult:
        self._metrics.config_reloaded("refused")
        log.error(
            "config_reload_refused", error=reason, hint=hint, action="the old configuration keeps running"
        )
        if new is not None:
            _quietly("config_close_failed", new.close)
        self.last = ReloadResult("refused", reason=reason)
        return self.last


def _quietly(event: str, call: Callable[[], object]) -> None:
    """``call()``; an exception is logged as ``event`` (a reload never raises)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001
        log.warning(event, error=f"{type(exc).__name__}: {exc}")
