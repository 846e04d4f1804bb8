"""``memtune.keep_freed_memory`` on this machine's C library, in fresh interpreters: with it, a
loop that decompresses and drops 1.5 MiB chunks (what a restore does per chunk) reuses freed
memory instead of faulting fresh pages in for every chunk. Counts page faults, not time."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

_LOOP = """
import os, resource, sys
from contentflow_backupd.memtune import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "1" else None
import zstandard
blob = zstandard.ZstdCompressor(level=1).compress(os.urandom(1 << 19) * 3)
d = zstandard.ZstdDecompressor()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    plain = d.decompress(blob)
    body = bytes(memoryview(plain)[1:])
    del plain, body
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuned: bool) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _LOOP, "1" if tuned else "0"], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018 - only whether the symbol exists
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_freed_chunks_are_reused_instead_of_faulted_in_again() -> None:
    took, tuned = _faults(True)
    _, default = _faults(False)
    assert took == "True"
    # 100 chunks of 3 MiB allocated: by default most pages come fresh from the kernel (tens of
    # thousands of faults); kept, only the first chunks' pages do.
    assert tuned < 5_000 < default, (tuned, default)
