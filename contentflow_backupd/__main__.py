"""``python -m contentflow_backupd``: same as the ``contentflow-backupd`` command."""

from contentflow_backupd.entry import main

raise SystemExit(main())
