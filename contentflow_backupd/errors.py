"""The exceptions of contentflow-backupd, and the exit code each one maps to.

Every error that leaves a layer is one of these; library errors (botocore, psycopg, cryptography,
SQLAlchemy) are translated at the boundary of the module that owns the library, once.

::

    BackupdError                      exit 1 unless noted
    ├── ConfigError                   exit 2: invalid settings, names the setting
    ├── UsageError                    exit 2: bad command-line input
    ├── StorageError                  anything the storage backend refused or could not do
    │   ├── ObjectNotFound            the key does not exist (stat, open, a missing chunk)
    │   ├── ObjectExists              a create-only put found an existing object
    │   ├── StorageUnavailable        transient: network, timeouts, 5xx, throttling (retryable)
    │   ├── StorageAccessDenied       credentials or permissions (not retryable)
    │   │   └── ObjectLocked          S3 Object Lock refused a delete before the retain-until date
    │   └── IncompleteWrite           the service acknowledged a put that left no whole object
    ├── RepositoryError               the repository format
    │   ├── RepositoryNotFound        no repo.json at the URL
    │   ├── RepositoryExists          init on an initialised repository
    │   ├── UnsupportedFormat         repo.json from a newer or foreign format
    │   ├── WrongKey                  the configured secret opens no key of the repository
    │   ├── KeyMissing                no secret configured, or a data key id that is not present
    │   └── IntegrityError            an object failed authentication, decompression or its hash
    ├── SourceError                   the database side: unreachable, pg_dump/pg_restore failed
    ├── CatalogError                  the catalog database
    ├── BackupNotFound                an unknown backup id
    ├── LockedError                   another process holds the lock (e.g. a running backup)
    ├── SpaceReserved                 a local file system is below its free-space reserve
    ├── LeaseLost                     the daemon does not hold the cluster's fleet lease: a run
    │                                 it would start is refused (nothing recorded, nothing done)
    ├── VerificationFailed            verify found faults (the faults are listed on it)
    └── RecoveryMustStop              exit 126: wal-fetch found a damaged object or could not
                                      reach storage; PostgreSQL stops recovery (exit > 125)
                                      instead of ending it early as for a missing file (exit 1)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RECOVERY_FATAL = 126


class BackupdError(Exception):
    """Base of every error this program raises on purpose."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(BackupdError):
    exit_code = EXIT_USAGE


class UsageError(BackupdError):
    exit_code = EXIT_USAGE


class StorageError(BackupdError):
    """The storage backend refused or could not complete an operation."""

    retryable: bool = False

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class ObjectNotFound(StorageError):
    pass


class ObjectExists(StorageError):
    pass


class StorageUnavailable(StorageError):
    retryable = True


class StorageAccessDenied(StorageError):
    pass


class ObjectLocked(StorageAccessDenied):
    """A delete refused because the object (a version of it) is under S3 Object Lock."""


class IncompleteWrite(StorageError):
    retryable = True


class RepositoryError(BackupdError):
    pass


class RepositoryNotFound(RepositoryError):
    pass


class RepositoryExists(RepositoryError):
    pass


class UnsupportedFormat(RepositoryError):
    pass


class WrongKey(RepositoryError):
    pass


class KeyMissing(RepositoryError):
    pass


class IntegrityError(RepositoryError):
    """An object exists but is not what was written: bad tag, bad hash, bad compression."""

    def __init__(self, message: str, *, key: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class SourceError(BackupdError):
    pass


class CatalogError(BackupdError):
    pass


class SpaceReserved(BackupdError):
    """A drill or a large temporary file refused to start: the local file system it would write
    to has less free space than its reserve (``fsutil.require_free_space``)."""


class BackupNotFound(BackupdError):
    pass


class LockedError(BackupdError):
    pass


class LeaseLost(BackupdError):
    """This daemon of the fleet does not hold the lease of the cluster (expired, taken over, or
    never held): it may not start a run there (``daemon/fenced.py``)."""


class VerificationFailed(BackupdError):
    pass


class RecoveryMustStop(BackupdError):
    exit_code = EXIT_RECOVERY_FATAL
