"""The files of a physical restore around the tar stream: the owner, the new directory, the
recovery settings and ``restore_command``'s settings file. The tar stream itself is extracted by
``source/extract.py``.

Every file written here is 0600, given to the owner when running as root, and fsynced, as is its
directory: a restore that reported success survives a crash.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contentflow_backupd.errors import UsageError
from contentflow_backupd.fsutil import fsync_dir
from contentflow_backupd.source.base import ExtractStats as ExtractStats  # records of source.base
from contentflow_backupd.source.base import Owner as Owner
from contentflow_backupd.source.base import RecoveryConfig as RecoveryConfig

DIR_MODE = 0o700
FILE_MODE = 0o600


# -- owner ---------------------------------------------------------------------------------
def resolve_owner(spec: str | None) -> Owner:
    """``USER``, ``USER:GROUP`` or numeric ids; None is the invoking user. Only root may give
    files to someone else."""
    if spec is None:
        uid, gid = os.geteuid(), os.getegid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return Owner(uid, gid, name)
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--owner: no such user {user!r}") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"--owner: no such group {group!r}") from None
    owner = Owner(entry.pw_uid, gid, entry.pw_name)
    if os.geteuid() != 0 and (owner.uid != os.geteuid() or gid not in (os.getegid(), *os.getgroups())):
        raise UsageError(
            f"--owner {spec}: only root can restore a data directory for another user",
            hint="run the restore as that user (e.g. sudo -u postgres ...), or as root",
        )
    return owner


def readable_by(path: Path, owner: Owner) -> bool:
    """Whether ``owner`` may read ``path`` by its mode bits (root may read anything)."""
    if owner.uid == 0:
        return True
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == owner.uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == owner.gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def give_to(path: Path | str, owner: Owner, *, fd: int | None = None) -> None:
    """Give ``path`` (or the open ``fd``) to ``owner``; a no-op unless we are root."""
    if os.geteuid() != 0 or owner.uid == 0:
        return
    if fd is not None:
        os.fchown(fd, owner.uid, owner.gid)
    else:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)


# -- target directory ----------------------------------------------------------------------
def check_new_directory(path: Path, what: str) -> None:
    """``path`` must be absent or an empty directory. Raises ``UsageError`` before any change."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UsageError(f"{what} {path} exists and is not a directory")
    if path.is_dir():
        try:
            empty = next(os.scandir(path), None) is None
        except OSError as exc:
            raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
        if not empty:
            raise UsageError(
                f"{what} {path} is not empty; refusing to restore into it",
                hint="restore into a new or empty directory",
            )


@dataclass
class NewDirectory:
    """A directory made empty for a restore, and removed again (or emptied) when it fails."""

    path: Path
    owner: Owner
    created: bool = False

    def make(self) -> None:
        check_new_directory(self.path, "directory")
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.path, DIR_MODE)
            self.created = True
        os.chmod(self.path, DIR_MODE)
        give_to(self.path, self.owner)

    def discard(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


# -- recovery settings ---------------------------------------------------------------------
# Settings this writer owns in postgresql.auto.conf: earlier lines for them are dropped, so that
# a source that was itself restored cannot leave a second, conflicting recovery target behind.
RECOVERY_SETTINGS = (
    "restore_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
)
_SETTING_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)")


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def restore_command(tool: Sequence[str], config: Path) -> str:
    """``restore_command``: this tool with ``config``, run by PostgreSQL through ``sh -c``.

    Shell-quoted, and ``%`` doubled, since PostgreSQL replaces ``%f``, ``%p`` and ``%%``.
    """
    words = [*tool, "--config", str(config), "wal-fetch"]
    return " ".join(shlex.quote(w).replace("%", "%%") for w in words) + " %f %p"


def write_recovery_settings(pgdata: Path, settings: Mapping[str, str], owner: Owner, *, header: str) -> None:
    """Put ``settings`` at the end of ``postgresql.auto.conf`` (dropping earlier lines for the
    same names or for any recovery setting) and create ``recovery.signal``."""
    auto = pgdata / "postgresql.auto.conf"
    replaced = {n.lower() for n in (*RECOVERY_SETTINGS, *settings)}
    kept: list[str] = []
    if auto.exists():
        for line in auto.read_text(encoding="utf-8").splitlines():
            m = _SETTING_LINE.match(line)
            if m is None or m.group(1).lower() not in replaced:
                kept.append(line)
    if not kept:
        kept = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    lines = [*kept, *(f"# {h}" for h in header.splitlines())]
    lines += [f"{name} = {conf_quote(value)}" for name, value in settings.items()]
    write_private_file(auto, ("\n".join(lines) + "\n").encode(), owner, replace=True)
    write_private_file(pgdata / "recovery.signal", b"", owner)


def write_private_file(path: Path, data: bytes, owner: Owner, *, replace: bool = False) -> None:
    """Write ``path`` 0600, owned by ``owner``, durably (and atomically when replacing)."""
    tmp = path.with_name(f".{path.name}.tmp") if replace else path
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        give_to(tmp, owner, fd=fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, path)
    fsync_dir(path.parent)


# -- a settings file for restore_command ---------------------------------------------------
def recovery_dir_of(pgdata: Path) -> Path:
    return pgdata.with_name(pgdata.name + ".recovery")


def write_recovery_config(directory: Path, config: RecoveryConfig, owner: Owner) -> Path:
    """Write ``backupd.toml`` (and ``passphrase`` when needed) into the new ``directory``;
    returns the settings file."""
    document = {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.document.items()}
    encryption: dict[str, Any] = dict(document.get("encryption", {}))  # e.g. a KMS key id
    if config.passphrase is not None:
        secret = directory / "passphrase"
        write_private_file(secret, config.passphrase.encode() + b"\n", owner)
        encryption["passphrase_file"] = str(secret)
    elif config.secret_file is not None:
        encryption[config.secret_setting] = str(config.secret_file)
    document["encryption"] = encryption
    path = directory / "backupd.toml"
    header = "# Settings of restore_command (contentflow-backupd wal-fetch) for a restored server.\n"
    write_private_file(path, (header + to_toml(document)).encode(), owner)
    return path


def to_toml(document: Mapping[str, Any]) -> str:
    """TOML for a flat mapping with one level of tables (what Settings dumps to)."""
    top: list[str] = []
    tables: list[str] = []
    for key, value in document.items():
        if isinstance(value, Mapping):
            rows = [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
            if rows:
                tables.append(f"\n[{key}]\n" + "\n".join(rows) + "\n")
        elif value is not None:
            top.append(f"{key} = {_toml_value(value)}\n")
    return "".join(top) + "".join(tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
