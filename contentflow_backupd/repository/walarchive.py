"""The WAL archive inside the repository: ``<cluster>/wal/<timeline>/<file name>``.

Rules (the archive_command contract, as pgBackRest and WAL-G keep it):

- a push returns only after the object is durably stored;
- pushing the same name with identical content again succeeds and stores nothing new;
- pushing different content under an existing name fails and leaves the stored object as it was;
- WAL from another cluster (a different system identifier in the segment's long page header) is
  refused; the first push or physical backup records the cluster's identity in
  ``<cluster>/identity.json``;
- ``.history`` and ``.backup`` files are archived and protected the same way; ``.partial`` files
  are stored under their own ``.partial`` name, never as the complete segment.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from contentflow_backupd.errors import BackupdError, IntegrityError, ObjectExists, ObjectNotFound
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.wal import classify, timeline_of

XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct(
    "<HHIQIIQII"
)  # magic, info, tli, pageaddr, rem_len, pad, sysid, seg_size, blcksz


class WalConflict(BackupdError):
    """A different file is already archived under this name."""


class WalRefused(BackupdError):
    """The file is not WAL of this cluster, or not a WAL archive file at all."""


@dataclass(frozen=True)
class SegmentHeader:
    timeline: int
    system_identifier: int
    segment_size: int
    block_size: int


def read_segment_header(data: bytes) -> SegmentHeader | None:
    """The long page header at the start of a WAL segment, or None when it has none."""
    if len(data) < _LONG_HEADER.size:
        return None
    _magic, info, tli, _addr, _rem, _pad, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER:
        return None
    return SegmentHeader(timeline=tli, system_identifier=sysid, segment_size=seg_size, block_size=blcksz)


@dataclass(frozen=True)
class ClusterIdentity:
    system_identifier: str
    segment_size: int
    pg_version_num: int | None = None


PushStatus = Literal["stored", "duplicate"]


class WalArchive:
    """Push, fetch and list WAL archive files of one cluster. Thread-safe."""

    def __init__(self, repo: Repository, cluster: str) -> None:
        self.repo = repo
        self.cluster = cluster
        self._identity: ClusterIdentity | None = None

    # -- keys ------------------------------------------------------------------------------
    def prefix(self, timeline: int | None = None) -> str:
        base = f"{self.cluster}/wal/"
        return base if timeline is None else f"{base}{timeline:08X}/"

    def key(self, name: str) -> str:
        if classify(name) is None:
            raise WalRefused(f"{name!r} is not a WAL file name (segment, .history, .backup or .partial)")
        return f"{self.prefix(timeline_of(name))}{name}"

    # -- identity --------------------------------------------------------------------------
    def identity(self) -> ClusterIdentity | None:
        if self._identity is None:
            try:
                raw = json.loads(self.repo.get_object(f"{self.cluster}/identity.json"))
            except ObjectNotFound:
                return None
            self._identity = ClusterIdentity(
                system_identifier=str(raw["system_identifier"]),
                segment_size=int(raw["segment_size"]),
                pg_version_num=raw.get("pg_version_num"),
            )
        return self._identity

    def ensure_identity(
        self, system_identifier: str, segment_size: int, pg_version_num: int | None = None
    ) -> None:
        """Record the cluster's identity, or refuse a different one."""
        current = self.identity()
        if current is None:
            doc = {
                "system_identifier": system_identifier,
                "segment_size": segment_size,
                "pg_version_num": pg_version_num,
                "created_at": iso(utcnow()),
            }
            with contextlib.suppress(ObjectExists):
                self.repo.put_object(
                    f"{self.cluster}/identity.json", json.dumps(doc).encode(), if_absent=True
                )
            self._identity = None
            current = self.identity()
            assert current is not None
        if current.system_identifier != system_identifier:
            raise WalRefused(
                f"this is PostgreSQL system {system_identifier}, but cluster {self.cluster!r} of the "
                f"repository belongs to system {current.system_identifier}; refusing to mix them",
                hint="use another BACKUPD_CLUSTER (or repository) for a different PostgreSQL cluster",
            )

    # -- push / fetch ----------------------------------------------------------------------
    def push(self, name: str, data: bytes) -> PushStatus:
        kind = classify(name)
        key = self.key(name)
        if kind in ("segment", "partial"):
            header = read_segment_header(data)
            if header is None:
                raise WalRefused(f"{name} does not start with a WAL segment header: not a WAL segment")
            if kind == "segment" and len(data) != header.segment_size:
                raise WalRefused(
                    f"{name} is {len(data)} bytes, but its header says segments are {header.segment_size}"
                )
            # The first segment of a new timeline starts with pages copied from the old one, so
            # its header may name an older timeline; never a newer one.
            if kind == "segment" and header.timeline > timeline_of(name):
                raise WalRefused(
                    f"{name} holds WAL of timeline {header.timeline}, newer than the timeline its name says"
                )
            self.ensure_identity(str(header.system_identifier), header.segment_size)
        try:
            self.repo.put_object(key, data, if_absent=True)
            return "stored"
        except ObjectExists:
            pass
        try:
            existing = self.repo.get_object(key)
        except IntegrityError as exc:
            raise WalConflict(
                f"{name} is already archived at {key} but the stored object is damaged ({exc.message}); "
                "it was left unchanged",
                hint="inspect the object; remove it by hand only if you are sure the new file is right",
            ) from None
        if existing == data:
            return "duplicate"
        raise WalConflict(
            f"a different {name} is already archived at {key}; the stored object was left unchanged. "
            "Two servers may be archiving into the same repository and cluster",
            hint="check that only one PostgreSQL cluster archives into this BACKUPD_CLUSTER",
        )

    def fetch(self, name: str) -> bytes:
        """The file's bytes; ``ObjectNotFound`` when not archived, ``IntegrityError`` when damaged."""
        return self.repo.get_object(self.key(name))

    def exists(self, name: str) -> bool:
        try:
            self.repo.storage.stat(self.key(name))
        except ObjectNotFound:
            return False
        return True

    def names(self, timeline: int | None = None) -> Iterator[str]:
        """Archived file names, in key order (timeline, then name)."""
        prefix = self.prefix(timeline)
        for info in self.repo.storage.list(prefix):
            name = info.key.rsplit("/", 1)[-1]
            if classify(name) is not None:
                yield name
