"""Tuning of the C allocator for a process that streams large buffers (stdlib only).

A restore allocates and frees every chunk several times over (the object read, its plaintext,
the decompressed chunk: about 3 MiB per 1.4 MiB chunk, on several threads). glibc's defaults give
blocks that size back to the kernel as soon as they are freed (the top of a heap is trimmed past
128 KiB, and ``mmap`` serves blocks past an adaptive threshold), so the next chunk faults fresh,
zeroed pages in again: on the 1 GiB bench restore about 170,000 page faults, a sixth of the
restore's CPU time. ``keep_freed_memory`` asks glibc to keep what it freed for reuse instead, up
to a bound, like ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` would: the peak memory
of the process is what it holds at once (plus what it keeps, at most ``trim_bytes``), not more
work for the kernel.

Only for a process that does such streaming and then ends (the ``restore --pgdata`` command), not
the daemon. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(*, trim_bytes: int = 256 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """Keep up to ``trim_bytes`` of freed heap memory for reuse, and serve blocks up to
    ``mmap_bytes`` from the heap (glibc's ``mallopt``). True when the C library took both."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes))
