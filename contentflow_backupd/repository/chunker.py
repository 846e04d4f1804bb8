"""Content-defined chunking behind our own small interface (pyfastcdc's FastCDC 2020).

Boundaries depend only on content, so an insert in the middle of a stream moves boundaries only
locally and unchanged regions dedup. The parameters are fixed per repository (``repo.json``):
changing them would make every chunk new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast

from pyfastcdc import FastCDC

from contentflow_backupd.errors import ConfigError

MIN_AVG = 64 * 1024
MAX_AVG = 4 * 1024 * 1024
MIN_CHOSEN_AVG = 1024
"""The smallest average a generation may choose for itself (packed: ``pipeline.PACK_BELOW``);
the setting's smallest stays ``MIN_AVG``."""


@dataclass(frozen=True)
class ChunkerParams:
    avg_size: int = 1024 * 1024
    algorithm: str = "fastcdc-2020"
    normalized_chunking: int = 1

    @property
    def min_size(self) -> int:
        return self.avg_size // 4

    @property
    def max_size(self) -> int:
        return self.avg_size * 4

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "avg_size": self.avg_size,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "normalized_chunking": self.normalized_chunking,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChunkerParams:
        params = cls(
            avg_size=int(raw["avg_size"]),
            algorithm=str(raw.get("algorithm", "fastcdc-2020")),
            normalized_chunking=int(raw.get("normalized_chunking", 1)),
        )
        params.check()
        return params

    def check(self, *, minimum: int = MIN_AVG) -> None:
        if self.algorithm != "fastcdc-2020":
            raise ConfigError(f"unknown chunking algorithm {self.algorithm!r}")
        if not minimum <= self.avg_size <= MAX_AVG:
            raise ConfigError(
                f"BACKUPD_CHUNKING__AVG_SIZE: {self.avg_size} is outside {MIN_AVG}..{MAX_AVG} bytes"
            )


class Chunker:
    """Cuts a byte stream into content-defined chunks."""

    def __init__(self, params: ChunkerParams) -> None:
        params.check(minimum=MIN_CHOSEN_AVG)
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalized_chunking,  # type: ignore[arg-type]
        )

    def chunks(self, stream: BinaryIO, digest: _Hasher | None = None) -> Iterator[memoryview]:
        """Yield the chunks of ``stream`` until EOF, as read-only views; ``digest``, when given,
        is updated with the stream's bytes in order, a buffer's worth per call (per chunk, the
        calls cost more than the hashing with small chunks), all of them by the time the last
        chunk has been taken.

        The stream is read into buffers of ``BUFFER_CHUNKS`` x the maximum chunk size, each one
        new and never written again once chunks are cut from it, so a view stays valid (and its
        buffer alive) as long as someone holds it, on any thread, with no copy per chunk. Only
        the tail shorter than a maximum chunk is copied into the next buffer. The boundaries
        are exactly those of FastCDC over the stream (``pyfastcdc``'s ``cut_stream``): a cut is
        made with at least a maximum chunk of data ahead, or at the end of the stream.
        """
        max_size = self.params.max_size
        size = max(BUFFER_CHUNKS * max_size, MIN_BUFFER)
        readinto = _readinto(stream)
        spare: list[bytearray] = []
        buf = bytearray(size)
        filled = _fill(readinto, buf, 0)
        eof = filled < size
        offset = 0
        hashed = 0  # bytes of ``buf`` given to ``digest``: those of the chunks taken from it
        while True:
            left = filled - offset
            if digest is not None and (left == 0 or (left < max_size and not eof)):
                digest.update(memoryview(buf)[hashed:offset])
                hashed = offset
            if left < max_size and not eof:
                hashed = 0
                tail, buf = buf, _free_buffer(spare, size)
                buf[:left] = memoryview(tail)[offset:filled]
                spare.append(tail)
                del tail
                filled = _fill(readinto, buf, left)
                eof = filled < size
                offset = 0
                continue
            if left == 0:
                return
            view = memoryview(buf).toreadonly()
            # Every cut FastCDC makes in the buffer, in one pass (one call per chunk cost more
            # than the cut with small chunks), as long as a maximum chunk of data lies ahead of
            # the chunk's start (or the stream ended): each cut depends only on the bytes from
            # its chunk's start, so these are the cuts of the whole stream.
            for cut in self._cdc.cut_buf(view[offset:filled]):
                if filled - offset < max_size and not eof:
                    break  # read more first
                yield view[offset : offset + cut.length]
                offset += cut.length


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> object: ...


BUFFER_CHUNKS = 4
"""A chunker's read buffer, in maximum chunk sizes (16 MiB with the default 1 MiB average)."""
MIN_BUFFER = 1024 * 1024
"""...and at least this much (small chunks: reads of a useful size)."""


def _free_buffer(spare: list[bytearray], size: int) -> bytearray:
    """A buffer of ``size`` bytes that no chunk refers to any more: a spare one whose views are
    all gone (a bytearray with live views cannot be resized: that is the test), else a new one.
    Reusing them spares zero-filling and faulting in 16 MiB for every 12 MiB or so read."""
    for i, old in enumerate(spare):
        try:
            old.append(0)
        except BufferError:
            continue  # a chunk of it is still in flight
        del old[-1]
        return spare.pop(i)
    return bytearray(size)


def _readinto(stream: BinaryIO) -> Callable[[memoryview], int | None]:
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        return cast(Callable[[memoryview], "int | None"], readinto)

    def read_into(dest: memoryview) -> int:
        data = stream.read(len(dest))
        dest[: len(data)] = data
        return len(data)

    return read_into


def _fill(readinto: Callable[[memoryview], int | None], buf: bytearray, start: int) -> int:
    """Read into ``buf`` from ``start`` until it is full or the stream ends; the bytes held."""
    view = memoryview(buf)
    filled = start
    while filled < len(buf):
        n = readinto(view[filled:])
        if not n:  # 0 at EOF (None only from a non-blocking stream, which we never get)
            break
        filled += n
    return filled
