"""contentflow-backupd: a PostgreSQL backup daemon.

Encrypted, compressed, deduplicated backups to S3 or a local directory, restores, verification,
and (in later releases) scheduling, WAL archiving, restore drills and a migration guard.
"""

__version__ = "0.1.0"
