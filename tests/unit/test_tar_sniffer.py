"""TarSniffer: the members it keeps from a pg_basebackup-like tar stream fed in pieces (pure)."""

from __future__ import annotations

import io
import random
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.physical import TarSniffer


def make_tar(members: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


MEMBERS = {
    "PG_VERSION": b"17\n",
    # over 100 bytes: the ustar prefix
    "base/16384/" + "d" * 60 + "/" + "x" * 60: random.Random(1).randbytes(3000),
    "backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
    "global/pg_control": random.Random(2).randbytes(8192),
    "empty": b"",
    "backup_manifest": b'{"PostgreSQL-Backup-Manifest-Version": 1}\n' * 50,
}


@settings(deadline=None, max_examples=50)
@given(cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=40))
def test_keeps_the_wanted_members_whatever_the_pieces(cuts: list[int]) -> None:
    data = make_tar(MEMBERS)
    sniffer = TarSniffer({"backup_label", "backup_manifest", "empty", "missing"})
    pos = 0
    for i in range(len(data)):
        size = cuts[i % len(cuts)]
        sniffer.feed(data[pos : pos + size])
        pos += size
        if pos >= len(data):
            break
    assert sniffer.members == {k: MEMBERS[k] for k in ("backup_label", "backup_manifest", "empty")}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_every_format_pg_basebackup_may_write(fmt: int) -> None:
    sniffer = TarSniffer({"backup_label"})
    sniffer.feed(make_tar(MEMBERS, fmt))
    assert sniffer.members == {"backup_label": MEMBERS["backup_label"]}


def test_a_damaged_header_is_a_clear_error() -> None:
    data = bytearray(make_tar(MEMBERS))
    data[3] ^= 0xFF  # a byte of the first member's name: the checksum no longer matches
    with pytest.raises(SourceError, match="invalid member header"):
        TarSniffer({"backup_label"}).feed(bytes(data))
