"""``contentflow-backupd run``: the daemon's lifecycle, for every configured cluster.

Start-up, in order: schedules of every cluster validated (exit 2 naming the setting), catalog
opened and migrated, the daemon's lock on a SQLite catalog (a second daemon is refused), the
scheduler (no job store yet) and the HTTP listener. Then each cluster starts on a thread of its
own (``control.py``): client tools checked, repository opened (initialised when the location is
empty), metrics, job runner, WAL socket, its leader lock, its job store and jobs, its WAL stream.
A cluster whose start fails is retried while the others run; a configuration error in a first
attempt at start-up stops the daemon (exit 2; a wrong key exits 1). ``READY=1`` once each
cluster's first attempt is over.

The main thread only supervises: signals, leadership, the watchdog, ``STATUS=``, and the
scheduler's next-run metrics; jobs run on the scheduler's worker threads, probes in a small pool.
Shutdown is two-signal: the first stops new runs, lets the running ones finish within
``BACKUPD_SHUTDOWN_GRACE``, then stops their children and records them ``interrupted``, and
exits 0; a second signal stops at once.
"""

from __future__ import annotations

from contentflow_backupd.daemon.lifecycle import Daemon, run_daemon

__all__ = ["Daemon", "run_daemon"]
