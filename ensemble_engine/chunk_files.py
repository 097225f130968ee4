"""One row chunk of a local array as one file: read and written with a system call or two,
its CRC32C checksum verified on every read.

ee writes every array with the codecs ``bytes`` (little-endian) then ``crc32c``
(schemas/README.md, "Container"), so a chunk file is the chunk's raw rows, padded to full chunk
size, followed by the 4-byte little-endian CRC32C of those bytes: zarr v3's own encoding, which
any zarr reader checks too. Stores written before the checksum (``bytes`` alone) are read the same
way without it. A missing file is damage, never the fill value: ee writes every chunk.

The checksum is computed on each piece while it is in cache, right after it was read or just
before it is written, by the ``crc32c`` package (hardware CRC32C, about 8 GB/s here, and it
releases the GIL, so the parts of a large read or write check their chunks on both cores at
once); where it is missing, by google-crc32c, which zarr's own codec uses (about 3-6 GB/s,
holding the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import StoreError

CRC_BYTES = 4
# Bytes read then checksummed at a time: they are still in the core's cache when checked.
_PIECE_BYTES = 256 * 1024
PLAIN_CODEC = {"name": "bytes", "configuration": {"endian": "little"}}
CRC_CODEC = {"name": "crc32c"}


class DamagedChunk(StoreError):
    """A chunk is missing, of the wrong size, or fails its checksum (``problem`` says which)."""

    def __init__(self, message: str, key: str, problem: str) -> None:
        super().__init__(message)
        self.key, self.problem = key, problem

    def __reduce__(self) -> tuple:  # crosses from a combine worker to its parent whole
        return type(self), (str(self), self.key, self.problem)


def chunk_damage(array_path: str, key: str, problem: str) -> DamagedChunk:
    """The one-line error for a damaged chunk of the array at ``array_path`` (store-relative)."""
    parts = array_path.strip("/").split("/")
    if len(parts) >= 4 and parts[0] == "predictions":
        what, fix = f"prediction {parts[1]}/{parts[2]}", "re-create it (re-import it or re-run "
        fix += "the command that wrote it, with --force)"
    elif len(parts) >= 3 and parts[0] == "splits":
        what, fix = f"split {parts[1]}", "rebuild the store with `ee store init`"
    else:
        what, fix = "array " + "/".join(parts), "re-create it"
    return DamagedChunk(
        f"{what} is damaged: chunk {key} of {parts[-1]} {problem}; {fix} "
        "(`ee validate --deep STORE` lists every damaged chunk)",
        key,
        problem,
    )


try:
    from crc32c import crc32c as _crc32c

    def crc_extend(crc: int, data: np.ndarray) -> int:
        """``crc`` extended over the bytes of the contiguous array ``data``."""
        return _crc32c(data.reshape(-1).view(np.uint8), crc)

except ImportError:  # pragma: no cover - zarr's own dependency, slower and holding the GIL
    import google_crc32c

    def crc_extend(crc: int, data: np.ndarray) -> int:
        """``crc`` extended over the bytes of the contiguous array ``data``."""
        view = data.reshape(-1).view(np.uint8)
        view.flags.writeable = False  # google-crc32c takes read-only buffers only
        return google_crc32c.extend(crc, view)


class ChunkFile:
    """The file of one chunk of ``rows`` rows of ``row_bytes`` bytes (``checksum``: with CRC)."""

    def __init__(self, path: str, rows: int, row_bytes: int, checksum: bool) -> None:
        self.path, self.rows, self.row_bytes, self.checksum = path, rows, row_bytes, checksum
        self.size = rows * row_bytes + (CRC_BYTES if checksum else 0)

    def read(
        self,
        lo: int,
        hi: int,
        dst: np.ndarray,
        scratch: np.ndarray,
        cast: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        """Rows ``lo:hi`` of the chunk (0-based in it) into ``dst``: straight in, or with
        ``cast`` through ``scratch`` a piece at a time (each piece cast while in cache). With a
        checksum the rows outside ``lo:hi`` are read through ``scratch`` too, and the whole
        chunk is verified. Raises ``FileDamage`` for a missing, short or corrupt file.
        """
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise FileDamage("is missing") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != self.size:
                raise FileDamage(f"holds {size} bytes, not {self.size}")
            if not self.checksum:
                f.seek(lo * self.row_bytes)
            crc = self._through(f, 0, lo, scratch, 0) if self.checksum else 0
            if cast is None and not self.checksum:
                _read_exactly(f, dst)
            elif cast is None:  # checked a cache-sized piece at a time, just after it is read
                step = max(1, _PIECE_BYTES // max(1, self.row_bytes))
                for a in range(0, hi - lo, step):
                    piece = dst[a : a + step]
                    _read_exactly(f, piece)
                    crc = crc_extend(crc, piece)
            else:
                step = len(scratch)
                for a in range(lo, hi, step):
                    buf = scratch[: min(step, hi - a)]
                    _read_exactly(f, buf)
                    if self.checksum:
                        crc = crc_extend(crc, buf)
                    cast(buf, dst[a - lo : a - lo + len(buf)])
            if not self.checksum:
                return
            crc = self._through(f, hi, self.rows, scratch, crc)
            stored = f.read(CRC_BYTES)
        if int.from_bytes(stored, "little") != crc:
            raise FileDamage("fails its CRC32C checksum")

    @staticmethod
    def _through(f: Any, lo: int, hi: int, scratch: np.ndarray, crc: int) -> int:
        """Rows ``lo:hi`` read through ``scratch`` for the checksum alone."""
        step = len(scratch)
        for a in range(lo, hi, step):
            buf = scratch[: min(step, hi - a)]
            _read_exactly(f, buf)
            crc = crc_extend(crc, buf)
        return crc

    def write(self, rows: np.ndarray, pad: np.ndarray | None) -> None:
        """The chunk from ``rows`` (C-contiguous) and ``pad`` (fill rows up to full size)."""
        crc = crc_extend(0, rows) if self.checksum else 0
        if self.checksum and pad is not None:
            crc = crc_extend(crc, pad)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "wb") as f:
            f.write(memoryview(rows).cast("B"))
            if pad is not None:
                f.write(memoryview(pad).cast("B"))
            if self.checksum:
                f.write(crc.to_bytes(CRC_BYTES, "little"))


class FileDamage(Exception):
    """A chunk file's damage, turned into ``chunk_damage`` by the caller (which knows its key)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _read_exactly(f: Any, buf: np.ndarray) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view) and (part := f.readinto(view[got:])):
        got += part
    if got != len(view):
        raise FileDamage("ends early")
