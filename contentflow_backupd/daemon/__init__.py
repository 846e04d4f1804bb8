"""``contentflow-backupd run``: the daemon's lifecycle.

Start-up, in order (any failure exits before anything is scheduled): schedules validated (exit 2
naming the setting), catalog opened and migrated, leader lock (a second daemon on one SQLite
catalog is refused), repository opened (initialised when the location is empty; a wrong key exits
1), metrics, HTTP listener, scheduler. Then ``READY=1``.

The main thread only supervises: signals, leadership, the watchdog, ``STATUS=``, and the
scheduler's next-run metrics; jobs run on the scheduler's worker threads. Shutdown is two-signal:
the first stops new runs, lets the running one finish within ``BACKUPD_SHUTDOWN_GRACE``, then
stops its children and records it ``interrupted``, and exits 0; a second signal stops at once.
"""

from __future__ import annotations

from contentflow_backupd.daemon.lifecycle import Daemon, run_daemon

__all__ = ["Daemon", "run_daemon"]
