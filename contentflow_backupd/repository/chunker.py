"""Content-defined chunking behind our own small interface (pyfastcdc's FastCDC 2020).

Boundaries depend only on content, so an insert in the middle of a stream moves boundaries only
locally and unchanged regions dedup. The parameters are fixed per repository (``repo.json``):
changing them would make every chunk new.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pyfastcdc import FastCDC

from contentflow_backupd.errors import ConfigError

MIN_AVG = 64 * 1024
MAX_AVG = 4 * 1024 * 1024


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

    def check(self) -> None:
        if self.algorithm != "fastcdc-2020":
            raise ConfigError(f"unknown chunking algorithm {self.algorithm!r}")
        if not MIN_AVG <= self.avg_size <= MAX_AVG:
            raise ConfigError(
                f"BACKUPD_CHUNKING__AVG_SIZE: {self.avg_size} is outside {MIN_AVG}..{MAX_AVG} bytes"
            )


class Chunker:
    """Cuts a byte stream into content-defined chunks."""

    def __init__(self, params: ChunkerParams) -> None:
        params.check()
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalized_chunking,  # type: ignore[arg-type]
        )

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the chunks of ``stream`` until EOF. Each chunk is a private ``bytes`` copy."""
        for chunk in self._cdc.cut_stream(stream):
            yield bytes(chunk.data)
