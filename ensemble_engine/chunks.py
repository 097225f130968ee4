"""Row-chunked arrays moved chunk by chunk, straight between files and numpy buffers.

Scores are plain zarr v3 arrays chunked by rows only, every class of a row in one chunk, with the
``bytes`` and ``crc32c`` codecs (schemas/README.md, "Container"). In a local folder a chunk is
therefore one file of raw little-endian rows and their checksum, and ``RowChunks`` moves it with
one system call into or out of a numpy buffer (``chunk_files.ChunkFile``, which verifies the
checksum on every read); zarr's general path copies each chunk two or three times and crosses
its event loop per call (``tools/bench_store.py`` measures the difference). Any other store or
layout (a URL, an array another tool compressed) goes through zarr, whose codec verifies the
checksum; a chunk missing there is found from the store's listing, since zarr would read it as
the fill value.

Large reads and writes are cut into parts at chunk boundaries and run at once on the calling
thread and the I/O threads (``io_pool.in_parallel``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.storage import LocalStore

from .chunk_files import CRC_CODEC, PLAIN_CODEC, ChunkFile, DamagedChunk, FileDamage, chunk_damage
from .float16 import PASS_ITEMS, widen_float16
from .io_pool import in_parallel, io_threads
from .zarr_internals import sync

if TYPE_CHECKING:
    import zarr

# Rows per chunk: about 2 MiB of scores, all classes of a row in one chunk, so a row-streaming
# reader touches each chunk exactly once, and a graph streaming 66 inputs holds 66 chunks.
TARGET_CHUNK_BYTES = 2 * 1024 * 1024
# The codecs ee writes (``CODECS``), and those of stores written before the checksum.
CODECS = [PLAIN_CODEC, CRC_CODEC]
_UNCHECKED = [PLAIN_CODEC]
# ``check(rows)`` raises to refuse rows; a write calls it on each chunk's rows just before writing
# them, while they are in cache (one pass over memory instead of a check pass, then a write pass).
Check = Callable[[np.ndarray], None]
_WRITE_EMPTY = {"write_empty_chunks": True}


def chunk_rows_for(n_classes: int, itemsize: int) -> int:
    """Rows per chunk for rows of ``n_classes`` items of ``itemsize`` bytes (about 2 MiB)."""
    rows = TARGET_CHUNK_BYTES // max(1, n_classes * itemsize)
    return int(max(64, min(rows, 65536)))


def _plain_local_folder(arr: zarr.Array) -> tuple[str | None, bool]:
    """The array's folder if its chunks are files of raw little-endian rows (else None), and
    whether each ends in its CRC32C checksum."""
    store = arr.store_path.store
    meta = arr.metadata.to_dict()
    codecs = [dict(c) for c in meta.get("codecs", ())]
    plain = (
        isinstance(store, LocalStore)
        and sys.byteorder == "little"
        and meta.get("zarr_format") == 3
        and codecs in (CODECS, _UNCHECKED)
        and not meta.get("storage_transformers")
        and (meta.get("chunk_grid") or {}).get("name") == "regular"
        and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])
        and np.dtype(arr.dtype) in (np.float16, np.float32, np.int32)
    )
    if not plain:
        return None, False
    return os.path.join(store.root, arr.store_path.path), codecs == CODECS


class RowChunks:
    """One stored array [N, ...] chunked by rows only, read by rows and written by whole chunks.

    Where ``_plain_local_folder`` allows, a chunk is read with ``readinto`` straight into the
    caller's buffer (float16 widened on the way through a cache-sized scratch) and written with
    one ``write``, edge chunks padded to full size as zarr v3 stores them; elsewhere zarr does it.
    """

    def __init__(self, arr: zarr.Array) -> None:
        # every chunk is written, even one holding only the fill value: a missing chunk is damage
        self.arr = arr if arr.config.write_empty_chunks else arr.with_config(_WRITE_EMPTY)
        self.n, self.step = int(arr.shape[0]), int(arr.chunks[0])
        self.dtype = np.dtype(arr.dtype)
        self.row_shape = tuple(int(s) for s in arr.shape[1:])
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.folder, self.checksum = _plain_local_folder(arr)
        self._listed: set[str] | None = None  # the stored chunk keys (zarr path), listed once

    @property
    def chunk_count(self) -> int:
        return -(-self.n // self.step)

    def key(self, chunk: int) -> str:
        return self.arr.metadata.encode_chunk_key((chunk,) + (0,) * len(self.row_shape))

    def _file(self, chunk: int) -> ChunkFile:  # plain strings: pathlib's parsing costs per chunk
        assert self.folder is not None
        path = f"{self.folder}/{self.key(chunk)}"
        return ChunkFile(path, self.step, self.row_bytes, self.checksum)

    def _damage(self, chunk: int, problem: str) -> DamagedChunk:
        return chunk_damage(self.arr.store_path.path, self.key(chunk), problem)

    def missing(self) -> list[int]:
        """The chunks of this array that are not stored, from one listing of the store."""
        prefix = f"{self.arr.store_path.path}/"

        async def listing() -> set[str]:
            store = self.arr.store_path.store
            return {k.removeprefix(prefix) async for k in store.list_prefix(prefix)}

        self._listed = sync(listing())
        return [c for c in range(self.chunk_count) if self.key(c) not in self._listed]

    def check_size(self, chunk: int) -> None:
        """A local chunk file is there and of its full size (one stat; no checksum)."""
        f = self._file(chunk)
        try:
            size = os.stat(f.path).st_size
        except FileNotFoundError:
            raise self._damage(chunk, "is missing") from None
        if size != f.size:
            raise self._damage(chunk, f"holds {size} bytes, not {f.size}")

    def _check_stored(self, start: int, stop: int) -> None:
        """Chunks of rows ``start:stop`` are stored (zarr would read a missing one as fill)."""
        if self._listed is None:
            self.missing()
        assert self._listed is not None
        for c in range(start // self.step, -(-stop // self.step)):
            if self.key(c) not in self._listed:
                raise self._damage(c, "is missing")

    def read(self, start: int = 0, stop: int | None = None, dtype: Any = None) -> np.ndarray:
        """Rows ``start:stop`` as a new array of ``dtype`` (default: the stored one).

        A large range is read in parts at once, cut at chunk boundaries (``in_parallel``).
        """
        stop = self.n if stop is None else stop
        out = np.empty((stop - start, *self.row_shape), dtype=dtype or self.dtype)
        if self.folder is None:  # zarr reads the chunks concurrently itself
            return self._read_into(start, stop, out)

        def part(lo: int, hi: int) -> None:
            self._read_into(lo, hi, out[lo - start : hi - start])

        in_parallel(part, start, stop, align=self.step, nbytes=out.nbytes)
        return out

    def read_ahead(
        self, step: int, dtype: Any = None
    ) -> Iterator[tuple[slice, Future[np.ndarray]]]:
        """Blocks of ``step`` rows, each read on an I/O thread while the one before is used.

        Streaming consumers compute while the next block is read and widened, so on two cores
        reading costs little more than the slower of the two; each reader holds one block ahead.
        """
        blocks = [slice(a, min(a + step, self.n)) for a in range(0, self.n, step)]
        ahead: Future[np.ndarray] | None = None
        for i, rows in enumerate(blocks):
            current = ahead or io_threads().submit(self._read_block, rows, dtype)
            ahead = None
            if i + 1 < len(blocks):
                ahead = io_threads().submit(self._read_block, blocks[i + 1], dtype)
            yield rows, current

    def _read_block(self, rows: slice, dtype: Any) -> np.ndarray:
        out = np.empty((rows.stop - rows.start, *self.row_shape), dtype=dtype or self.dtype)
        return self._read_into(rows.start, rows.stop, out)

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        if self.folder is None:
            self._check_stored(start, stop)
            try:
                out[...] = self.arr[start:stop]
            except ValueError as exc:  # zarr's crc32c codec, or a chunk of the wrong size
                first, last = start // self.step, (stop - 1) // self.step
                problem = f"(or one up to chunk {last}) cannot be decoded: {exc}"
                raise self._damage(first, problem) from None
            return out
        rows_per_pass = max(1, PASS_ITEMS * 4 // max(1, self.row_bytes))
        scratch = np.empty((min(rows_per_pass, self.step), *self.row_shape), self.dtype)
        cast = None if out.dtype == self.dtype else _cast
        for c in range(start // self.step, -(-stop // self.step)):
            c0 = c * self.step
            lo, hi = max(start, c0), min(stop, c0 + self.step)
            try:  # float16 is widened piece by piece while the rows are in cache
                self._file(c).read(lo - c0, hi - c0, out[lo - start : hi - start], scratch, cast)
            except FileDamage as exc:
                raise self._damage(c, exc.problem) from None
        return out

    def write_chunk(self, chunk: int, rows: np.ndarray, check: Check | None = None) -> None:
        """Write chunk ``chunk`` whole from ``rows``, all its rows (the last chunk has fewer)."""
        start = chunk * self.step
        if check is not None:
            check(rows)
        if self.folder is None:
            self.arr[start : start + len(rows)] = rows
            return
        pad = self.step - len(rows)
        padding = np.full((pad, *self.row_shape), self.arr.fill_value, self.dtype) if pad else None
        self._file(chunk).write(np.ascontiguousarray(rows, dtype=self.dtype), padding)

    def write_chunks(self, first: int, rows: np.ndarray, check: Check | None = None) -> None:
        """Write chunks ``first``, ``first + 1``… whole from ``rows``, several at once.

        ``rows`` holds ``step`` rows per chunk, fewer only for the array's last chunk. When
        ``check`` refuses a chunk, chunks of the other parts may already be written: the caller
        removes the array (as ``PredictionWriter`` does).
        """
        if self.folder is None:  # one zarr call: zarr writes the chunks concurrently itself
            if check is not None:
                check(rows)
            start = first * self.step
            self.arr[start : start + len(rows)] = rows
            return

        def part(a: int, b: int) -> None:
            for c in range(a, b):
                self.write_chunk(first + c, rows[c * self.step : (c + 1) * self.step], check)

        in_parallel(part, 0, -(-len(rows) // self.step), nbytes=rows.nbytes)


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    if src.dtype == np.float16 and dst.dtype == np.float32:
        widen_float16(src, dst)
    else:
        np.copyto(dst, src, casting="unsafe")


class ChunkGatherer:
    """Row blocks in, whole chunks out.

    A producer writes batches of a few dozen rows: they are gathered into the chunk they fill, so
    every chunk is written once instead of read and rewritten per batch. A block covering whole
    chunks has them written at once (``RowChunks.write_chunks``). A block that neither covers
    whole chunks nor touches the rows being gathered goes through zarr's read-modify-write
    (``write_at`` in random order still works, only slower).
    """

    def __init__(self, chunks: RowChunks) -> None:
        self.chunks = chunks
        self.buf = np.empty((0, *chunks.row_shape), chunks.dtype)
        self.at, self.fill = -1, 0  # the chunk being gathered; its rows 0:fill are in buf

    def put(self, start: int, block: np.ndarray, check: Check | None = None) -> None:
        """Rows ``start…`` from ``block``; ``check`` (if given) sees every row before it is
        stored or gathered: whole chunks as they are written, other pieces up front."""
        rc, pos, stop = self.chunks, start, start + len(block)
        while pos < stop:
            c = pos // rc.step
            c0, c1 = c * rc.step, min((c + 1) * rc.step, rc.n)
            hi = min(stop, c1)
            if pos == c0 and hi == c1:  # whole chunks from here on: all of them at once
                end = stop if stop == rc.n else c0 + (stop - c0) // rc.step * rc.step
                if c <= self.at < -(-end // rc.step):
                    self.at, self.fill = -1, 0  # every gathered row replaced
                rc.write_chunks(c, block[pos - start : end - start], check)
                pos = end
                continue
            piece = block[pos - start : hi - start]
            if check is not None:
                check(piece)
            if (self.at == c and pos - c0 <= self.fill) or (self.at != c and pos == c0):
                if self.at != c:
                    self.flush()
                    self.at = c
                    if not len(self.buf):
                        self.buf = np.empty((rc.step, *rc.row_shape), rc.dtype)
                self.buf[pos - c0 : hi - c0] = piece
                self.fill = max(self.fill, hi - c0)
                if self.fill == c1 - c0:
                    rc.write_chunk(c, self.buf[: self.fill])
                    self.at, self.fill = -1, 0
            else:
                if self.at == c:
                    self.flush()
                rc.arr[pos:hi] = piece
            pos = hi

    def flush(self) -> None:
        """Write the rows gathered for an unfinished chunk (zarr merges them with the rest)."""
        if self.at >= 0 and self.fill:
            c0 = self.at * self.chunks.step
            self.chunks.arr[c0 : c0 + self.fill] = self.buf[: self.fill]
        self.at, self.fill = -1, 0
