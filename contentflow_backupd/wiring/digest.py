"""Digests of resolved settings: what a reload (and, later, daemons comparing their
configurations) compares, without ever holding a secret in clear.

A cluster's digest is the SHA-256 of its resolved settings (``Settings.for_cluster``) without
the daemon-level keys (``DAEMON_LEVEL``): every value as canonical JSON, each secret
(``SecretStr``) replaced by its own SHA-256 (so a rotated password or passphrase changes the
digest, and the digest holds no secret). It is split in two parts, so a reload can tell a
schedule-only change (the ``schedule`` section: re-register the cluster's jobs) from any other
(restart the cluster): ``cluster_digests(view) -> (settings, schedule)`` and
``combine(settings, schedule)``, the one digest. Nothing depends on the process: the same
settings give the same digests in every process and on every host.

A secret's SHA-256 is not salted (the digest must be equal across daemons), so a weak
passphrase could be guessed from a digest by someone who also knows every other setting: keep
digests where the settings' readers are (the catalog, the logs), not in public places.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from contentflow_backupd.settings import ENV_PREFIX, Settings

DAEMON_LEVEL = (
    "catalog_url",
    "state_dir",
    "log",
    "http",
    "shutdown_grace",
    "progress_interval",
    "max_concurrent_jobs",
)
"""The settings of the daemon, not of a cluster (no ``[clusters.<name>]`` may set them): a
reload cannot change them (the daemon keeps its catalog, state directory, listener, log set-up,
pool and grace), so a reload that changes one is refused."""
NOT_COMPARED = frozenset({"config", "clusters"})
"""Not part of any digest: the file's path (the same file is re-read) and the clusters' own
tables (each cluster's resolved view has them merged in)."""
SCHEDULE = "schedule"


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data; a secret as ``{"sha256": ...}`` of its value."""
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        secret = value.get_secret_value().encode()
        return {"sha256": hashlib.sha256(b"contentflow-backupd:secret\n" + secret).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cluster_digests(view: Settings) -> tuple[str, str]:
    """(settings, schedule): the digests of a cluster's resolved settings (``view``, from
    ``Settings.for_cluster``) without the daemon-level keys and the schedule, and of its
    schedule section."""
    skip = NOT_COMPARED | set(DAEMON_LEVEL) | {SCHEDULE}
    rest = {name: _plain(getattr(view, name)) for name in type(view).model_fields if name not in skip}
    return _sha256(rest), _sha256(_plain(getattr(view, SCHEDULE)))


def combine(settings: str, schedule: str) -> str:
    """The one digest of a cluster from its two parts (``cluster_digests``)."""
    return hashlib.sha256(f"contentflow-backupd:cluster\n{settings}\n{schedule}".encode()).hexdigest()


def daemon_digests(settings: Settings) -> dict[str, str]:
    """Each daemon-level setting (``DAEMON_LEVEL``, by leaf) -> the digest of its value, keyed
    by environment name (``BACKUPD_HTTP__LISTEN``): a reload names the ones that changed."""
    out: dict[str, str] = {}

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), (*path, name))
            return
        out[ENV_PREFIX + "__".join(p.upper() for p in path)] = _sha256(_plain(value))

    for name in DAEMON_LEVEL:
        walk(getattr(settings, name), (name,))
    return out
