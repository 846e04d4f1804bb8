"""``source.pipe.PipeReader`` over real pipes written by a real child process: the bytes come out
whole and in order, whether they were read ahead, read directly, or both, and the read-ahead
never holds more than its limit, keeps the writer going while the consumer catches up, and ends
when the writer does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from contentflow_backupd.repository.chunker import Chunker, ChunkerParams
from contentflow_backupd.source.pipe import CATCH_UP, READ_SIZE, PipeReader, pipe_size
from contentflow_backupd.source.tools import widen_pipe

# A child that writes ``size`` pseudo-random bytes in pieces of ``piece`` bytes (as pg_dump does,
# a few KB at a time), then exits.
WRITER = textwrap.dedent(
    """
    import os, random, sys
    size, piece, seed = map(int, sys.argv[1:4])
    rng = random.Random(seed)
    out = sys.stdout.buffer
    left = size
    while left:
        n = min(piece, left)
        out.write(rng.randbytes(n))
        left -= n
    out.flush()
    """
)


def expected(size: int, piece: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    parts = []
    left = size
    while left:
        n = min(piece, left)
        parts.append(rng.randbytes(n))
        left -= n
    return b"".join(parts)


@contextmanager
def writer(size: int, piece: int, seed: int = 7) -> Iterator[tuple[subprocess.Popen[bytes], PipeReader]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(size), str(piece), str(seed)], stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout is not None
    widen_pipe(proc.stdout.fileno())
    reader = PipeReader(proc.stdout.fileno())
    try:
        yield proc, reader
    finally:
        proc.kill()
        reader.stop()
        proc.stdout.close()
        proc.wait()


def read_all(reader: PipeReader, size: int = 300_000) -> bytes:
    buf = bytearray(size)
    out = bytearray()
    while n := reader.readinto(buf):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize(
    ("size", "piece", "limit"),
    [
        (3_000_000, 8192, 0),  # no read-ahead: every byte read directly, after short reads
        (3_000_000, 8192, 1_000_000),  # read ahead to the limit, the rest directly
        (3_000_000, 1 << 20, 2_500_001),  # a limit inside a piece
        (700_000, 4096, 64 << 20),  # the whole stream read ahead, EOF seen by the thread
        (0, 4096, 1 << 20),  # an empty stream
    ],
)
def test_the_stream_comes_out_whole_and_in_order(size: int, piece: int, limit: int) -> None:
    with writer(size, piece) as (proc, reader):
        reader.prefetch(limit)
        if limit >= size:
            proc.wait()  # the writer is done: the read-ahead holds everything, then EOF
        data = read_all(reader)
        assert reader.peak_held <= limit
        assert reader.readinto(bytearray(10)) == 0  # EOF stays EOF
    assert data == expected(size, piece, 7)


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll until ``condition()`` (the reader's thread works on its own); fails after 60 s."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


def test_the_read_ahead_stops_at_its_limit_while_the_writer_waits() -> None:
    with writer(8_000_000, 65536) as (proc, reader):
        reader.prefetch(2_000_000)
        wait_for(lambda: reader.read_ahead == 2_000_000)  # and not a byte more: the writer waits
        assert reader._thread is not None and reader._thread.is_alive()
        assert proc.poll() is None  # blocked on the full pipe, not finished
        data = read_all(reader)
        assert reader.peak_held == 2_000_000
    assert data == expected(8_000_000, 65536, 7)


def test_the_writer_goes_on_while_the_consumer_works_through_the_backlog() -> None:
    """The consumer's first reads take what was read ahead; meanwhile the thread reads on,
    ``CATCH_UP - 1`` bytes for every ``CATCH_UP`` taken, so the writer is not stopped until the
    whole backlog is handed out, and the memory held only shrinks."""
    limit = 4_000_000
    taken = 2_000_000
    more = taken - taken // CATCH_UP  # what the thread may read meanwhile
    with writer(12_000_000, 65536) as (_proc, reader):
        reader.prefetch(limit)
        wait_for(lambda: reader.read_ahead == limit)
        buf = bytearray(500_000)
        out = bytearray()
        for _ in range(taken // len(buf)):
            n = reader.readinto(buf)
            assert n == len(buf)
            out += buf[:n]
        wait_for(lambda: reader.read_ahead == limit + more)  # and not a byte more
        assert reader._thread is not None  # the backlog is not handed out yet
        assert reader.peak_held == limit
        while n := reader.readinto(buf):
            out += buf[:n]
        assert reader._thread is None  # stopped once the backlog was (nearly) handed out
        assert reader.peak_held == limit
        assert limit + more <= reader.read_ahead <= 12_000_000
    assert bytes(out) == expected(12_000_000, 65536, 7)


def test_small_buffers_take_the_read_ahead_in_pieces() -> None:
    with writer(500_000, 10_000) as (proc, reader):
        reader.prefetch(1 << 20)
        proc.wait()
        out = bytearray()
        buf = bytearray(777)  # smaller than every piece read ahead
        while n := reader.readinto(buf):
            assert n <= 777
            out += buf[:n]
    assert bytes(out) == expected(500_000, 10_000, 7)


def test_stop_returns_when_the_writer_is_killed() -> None:
    with writer(50_000_000, 4096) as (proc, reader):
        reader.prefetch(1 << 30)
        proc.kill()  # what ``PgDumpSource.close`` does first
        proc.wait()
        reader.stop()  # the pipe reaches EOF: the thread leaves
        assert reader._thread is None


def test_the_chunker_cuts_the_same_chunks_from_the_reader_as_from_the_bytes() -> None:
    size, piece = 3_000_000, 8192
    params = ChunkerParams(avg_size=64 * 1024)
    want = [bytes(c) for c in Chunker(params).chunks(_BytesStream(expected(size, piece, 7)))]
    with writer(size, piece) as (_proc, reader):
        reader.prefetch(1_000_000)
        got = [bytes(c) for c in Chunker(params).chunks(reader)]  # type: ignore[arg-type]
    assert got == want


class _BytesStream:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out


def test_eof_read_ahead_from_a_plain_pipe() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        os.close(w)
        reader = PipeReader(r)
        reader.prefetch(1 << 20)
        assert reader._thread is not None
        reader._thread.join(timeout=60)
        assert read_all(reader) == b"abc"
    finally:
        os.close(r)


def test_a_read_error_of_the_read_ahead_reaches_the_consumer() -> None:
    r, w = os.pipe()
    try:
        reader = PipeReader(w)  # the write end: reading it fails (EBADF)
        reader.prefetch(1 << 20)
        with pytest.raises(OSError):
            reader.readinto(bytearray(10))
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_that_could_not_be_widened_is_read_at_once() -> None:
    """Waiting after a short read needs room in the pipe: a 64 KiB pipe (F_SETPIPE_SZ refused)
    fills in a fraction of the wait, so there the reader never waits (and still reads it all)."""
    r, w = os.pipe()
    try:
        assert (pipe_size(r) or 0) < READ_SIZE  # Linux's default is 64 KiB
        reader = PipeReader(r)
        assert not reader.batched
        widen_pipe(r)
        assert PipeReader(r).batched == ((pipe_size(r) or 0) >= READ_SIZE)
        os.write(w, b"x" * 1000)
        os.close(w)
        w = -1
        assert read_all(reader) == b"x" * 1000
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_widened_pipe_is_read_in_batches() -> None:
    with writer(2_000_000, 4096) as (proc, reader):
        assert proc.stdout is not None
        assert reader.batched == ((pipe_size(proc.stdout.fileno()) or 0) >= READ_SIZE)
        assert read_all(reader) == expected(2_000_000, 4096, 7)
