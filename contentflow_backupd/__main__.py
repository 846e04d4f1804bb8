"""``python -m contentflow_backupd``: same as the ``contentflow-backupd`` command."""

from contentflow_backupd.cli import main

raise SystemExit(main())
