"""The composition root: settings -> the application (``App``), built once per process.

Only this package (and ``settings.py`` itself, and the command line's entry point, which loads
the settings) imports ``contentflow_backupd.settings``; nothing below it imports ``wiring``.
Split by area:

- ``app``: ``App``, what the commands and the daemon use; parts built lazily, cached;
- ``storage``: storage, the repository's key, the repository, the WAL archive, state paths;
- ``catalog``: the catalog;
- ``sources``: the configured server, dump/base-backup sources, restore targets, restore_command;
- ``options``: backup, drill and retention options;
- ``daemon``: job specs, notifier, WAL watcher and stream supervisor;
- ``health``: health objectives and the server probes;
- ``migrate``: the migration guard's options and dependencies;
- ``logs``: logging, with every configured secret registered.
"""

from __future__ import annotations

from contentflow_backupd.wiring.app import App

__all__ = ["App"]
