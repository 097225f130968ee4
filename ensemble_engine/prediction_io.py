"""Moving prediction rows in and out of the store, chunk by chunk; a prediction shows when complete.

Scores are plain zarr v3 arrays chunked by rows only, every class of a row in one chunk, with the
``bytes`` codec alone (schemas/README.md, "Container"). In a local folder a chunk is therefore one
file of raw little-endian rows, and ``RowChunks`` moves it with one system call into or out of a
numpy buffer; zarr's general path copies each chunk two or three times and crosses its event loop
per call (``tools/bench_store.py`` measures the difference). Any other store or layout (a URL, an
array another tool compressed) goes through zarr unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.storage import LocalStore

from .errors import StoreError
from .metrics import MetricAccumulator

if TYPE_CHECKING:
    import zarr

    from .store import Split

# Rows per chunk: about 2 MiB of scores, all classes of a row in one chunk, so a row-streaming
# reader touches each chunk exactly once, and a graph streaming 66 inputs holds 66 chunks.
TARGET_CHUNK_BYTES = 2 * 1024 * 1024
# Elements per pass of the float16 bit tricks: source, target and a temporary stay in L2 cache.
PASS_ITEMS = 1 << 16
# Rows per metrics update: log-softmax works in float64, so whole blocks would need GBs.
METRIC_ROWS = 1024
_HALF_SCALE = np.float32(2.0**112)  # float32 exponent bias (127) minus float16's (15)
_PLAIN_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}]


def chunk_rows_for(n_classes: int, itemsize: int) -> int:
    rows = TARGET_CHUNK_BYTES // max(1, n_classes * itemsize)
    return int(max(64, min(rows, 65536)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attrs as plain JSON values (what any reader of the store would see)."""
    return json.loads(json.dumps(_jsonable(attrs)))


def widen_float16(half: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = half`` (float16 → C-contiguous float32 of the same size), exactly, faster.

    numpy casts float16 one element at a time in software. Moving the exponent and mantissa
    bits into float32 position and rescaling by 2**112 gives the same value for every finite
    float16, subnormals included, in a few vectorised integer passes over cache-sized pieces.
    Pieces holding Inf or NaN (ee never stores them) take numpy's cast. A process that flushes
    subnormals to zero (no library here does) would read float16 subnormals, |x| < 6.1e-5, as 0.
    """
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.size != half.size:
        raise ValueError("widen_float16 writes into a C-contiguous float32 array of equal size")
    src = np.ascontiguousarray(half).reshape(-1)
    dst = out.reshape(-1)
    bits16, bits = src.view(np.uint16), dst.view(np.uint32)
    sign = np.empty(min(len(src), PASS_ITEMS), dtype=np.uint32)
    for lo in range(0, len(src), PASS_ITEMS):
        hi = min(lo + PASS_ITEMS, len(src))
        b, f, s = bits[lo:hi], dst[lo:hi], sign[: hi - lo]
        np.copyto(b, bits16[lo:hi])
        np.bitwise_and(b, np.uint32(0x8000), out=s)
        np.bitwise_and(b, np.uint32(0x7FFF), out=b)
        if b.max() >= 0x7C00:  # exponent all ones: Inf or NaN
            np.copyto(f, src[lo:hi])
            continue
        np.left_shift(b, np.uint32(13), out=b)
        np.multiply(f, _HALF_SCALE, out=f)
        np.left_shift(s, np.uint32(16), out=s)
        np.bitwise_or(b, s, out=b)
    return out


def all_finite(values: np.ndarray) -> bool:
    """No NaN or Inf in ``values``, without a boolean temporary the size of the block."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype == np.float16:  # exponent bits all ones = Inf or NaN
        bits, tmp = flat.view(np.uint16), np.empty(min(len(flat), PASS_ITEMS), np.uint16)
        for lo in range(0, len(bits), PASS_ITEMS):
            part = bits[lo : lo + PASS_ITEMS]
            if np.bitwise_and(part, 0x7FFF, out=tmp[: len(part)]).max() >= 0x7C00:
                return False
        return True
    # a sum is one vectorised pass; NaN and Inf make it non-finite (and rare overflow is rechecked)
    with np.errstate(over="ignore", invalid="ignore"):
        total = flat.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(flat).all())


def _plain_local_folder(arr: zarr.Array) -> str | None:
    """The array's folder if its chunks are files of raw little-endian rows, else None."""
    store = arr.store_path.store
    meta = arr.metadata.to_dict()
    plain = (
        isinstance(store, LocalStore)
        and sys.byteorder == "little"
        and meta.get("zarr_format") == 3
        and [dict(c) for c in meta.get("codecs", ())] == _PLAIN_CODECS
        and not meta.get("storage_transformers")
        and (meta.get("chunk_grid") or {}).get("name") == "regular"
        and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])
        and np.dtype(arr.dtype) in (np.float16, np.float32, np.int32)
    )
    return os.path.join(store.root, arr.store_path.path) if plain else None


class RowChunks:
    """One stored array [N, ...] chunked by rows only, read by rows and written by whole chunks.

    Where ``_plain_local_folder`` allows, a chunk is read with ``readinto`` straight into the
    caller's buffer (float16 widened on the way through a cache-sized scratch) and written with
    one ``write``, edge chunks padded to full size as zarr v3 stores them; elsewhere zarr does it.
    """

    def __init__(self, arr: zarr.Array) -> None:
        self.arr = arr
        self.n, self.step = int(arr.shape[0]), int(arr.chunks[0])
        self.dtype = np.dtype(arr.dtype)
        self.row_shape = tuple(int(s) for s in arr.shape[1:])
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.folder = _plain_local_folder(arr)

    def _path(self, chunk: int) -> str:  # plain strings: pathlib's parsing costs per chunk
        assert self.folder is not None
        key = self.arr.metadata.encode_chunk_key((chunk,) + (0,) * len(self.row_shape))
        return f"{self.folder}/{key}"

    def read(self, start: int = 0, stop: int | None = None, dtype: Any = None) -> np.ndarray:
        """Rows ``start:stop`` as a new array of ``dtype`` (default: the stored one).

        A range of several chunks is read in two halves at once, one on the reader thread.
        """
        stop = self.n if stop is None else stop
        out = np.empty((stop - start, *self.row_shape), dtype=dtype or self.dtype)
        middle = (start + stop) // 2 // self.step * self.step
        if middle <= start or self.folder is None:
            return self._read_into(start, stop, out)
        half = reader_thread().submit(self._read_into, middle, stop, out[middle - start :])
        self._read_into(start, middle, out[: middle - start])
        half.result()
        return out

    def read_ahead(
        self, step: int, dtype: Any = None
    ) -> Iterator[tuple[slice, Future[np.ndarray]]]:
        """Blocks of ``step`` rows, each read on the reader thread while the one before is used.

        Streaming consumers compute while the next block is read and widened, so on two cores
        reading costs little more than the slower of the two; each reader holds one block ahead.
        """
        blocks = [slice(a, min(a + step, self.n)) for a in range(0, self.n, step)]
        ahead: Future[np.ndarray] | None = None
        for i, rows in enumerate(blocks):
            current = ahead or reader_thread().submit(self._read_block, rows, dtype)
            ahead = None
            if i + 1 < len(blocks):
                ahead = reader_thread().submit(self._read_block, blocks[i + 1], dtype)
            yield rows, current

    def _read_block(self, rows: slice, dtype: Any) -> np.ndarray:
        out = np.empty((rows.stop - rows.start, *self.row_shape), dtype=dtype or self.dtype)
        return self._read_into(rows.start, rows.stop, out)

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        if self.folder is None:
            out[...] = self.arr[start:stop]
            return out
        rows_per_pass = max(1, PASS_ITEMS * 4 // max(1, self.row_bytes))
        scratch = np.empty((0, *self.row_shape), self.dtype)
        if out.dtype != self.dtype:
            scratch = np.empty((min(rows_per_pass, len(out)), *self.row_shape), self.dtype)
        for c in range(start // self.step, -(-stop // self.step)):
            lo, hi = max(start, c * self.step), min(stop, (c + 1) * self.step)
            if out.dtype == self.dtype:
                self._read_file(c, lo, hi, out[lo - start : hi - start])
                continue
            for a in range(lo, hi, rows_per_pass):  # widen while the rows are in cache
                b = min(hi, a + rows_per_pass)
                self._read_file(c, a, b, scratch[: b - a])
                _cast(scratch[: b - a], out[a - start : b - start])
        return out

    def _read_file(self, chunk: int, lo: int, hi: int, dst: np.ndarray) -> None:
        path, view = self._path(chunk), memoryview(dst).cast("B")
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                f.seek((lo - chunk * self.step) * self.row_bytes)
                got = 0
                while got < len(view) and (part := f.readinto(view[got:])):
                    got += part
        except FileNotFoundError:  # zarr leaves chunks holding only the fill value unwritten
            dst[...] = self.arr.fill_value
            return
        if size != self.step * self.row_bytes or got != len(view):  # as zarr's bytes codec would
            key = path[len(self.folder) + 1 :]  # type: ignore[arg-type]
            raise ValueError(f"chunk {key} holds {size} bytes, not {self.step * self.row_bytes}")

    def write_chunk(self, chunk: int, rows: np.ndarray) -> None:
        """Write chunk ``chunk`` whole from ``rows``, all its rows (the last chunk has fewer)."""
        start = chunk * self.step
        if self.folder is None:
            self.arr[start : start + len(rows)] = rows
            return
        path = self._path(chunk)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        with open(path, "wb") as f:
            f.write(memoryview(data).cast("B"))
            pad = self.step - len(rows)
            if pad:
                f.write(np.full((pad, *self.row_shape), self.arr.fill_value, self.dtype).tobytes())


_READER: tuple[int, ThreadPoolExecutor] | None = None


def reader_thread() -> ThreadPoolExecutor:
    """This process's reader thread (a forked child, whose copy lacks the thread, makes its own).

    Its tasks only read files and widen floats, and never wait on each other, so one thread
    serves every stream of the process without deadlock.
    """
    global _READER
    if _READER is None or _READER[0] != os.getpid():
        _READER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="ee-reader"))
    return _READER[1]


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    if src.dtype == np.float16 and dst.dtype == np.float32:
        widen_float16(src, dst)
    else:
        np.copyto(dst, src, casting="unsafe")


class ChunkGatherer:
    """Row blocks in, whole chunks out.

    A producer writes batches of a few dozen rows: they are gathered into the chunk they fill, so
    every chunk is written once instead of read and rewritten per batch. A block that neither
    covers whole chunks nor touches the rows being gathered goes through zarr's
    read-modify-write (``write_at`` in random order still works, only slower).
    """

    def __init__(self, chunks: RowChunks) -> None:
        self.chunks = chunks
        self.buf = np.empty((0, *chunks.row_shape), chunks.dtype)
        self.at, self.fill = -1, 0  # the chunk being gathered; its rows 0:fill are in buf

    def put(self, start: int, block: np.ndarray) -> None:
        rc, pos, stop = self.chunks, start, start + len(block)
        while pos < stop:
            c = pos // rc.step
            c0, c1 = c * rc.step, min((c + 1) * rc.step, rc.n)
            hi = min(stop, c1)
            piece = block[pos - start : hi - start]
            if pos == c0 and hi == c1:
                if self.at == c:
                    self.at, self.fill = -1, 0  # every row replaced
                rc.write_chunk(c, piece)
            elif (self.at == c and pos - c0 <= self.fill) or (self.at != c and pos == c0):
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


class PredictionWriter:
    """Context manager: ``write`` row blocks in order (or ``write_at``), then close to publish.

    On an exception inside the ``with`` block the partial prediction is deleted; on a normal exit
    the row count is checked, metrics are stored and ``complete: true`` is written last.
    """

    def __init__(
        self,
        root: zarr.Group,
        name: str,
        split: Split,
        *,
        kind: str,
        classes: list[str],
        store_classes: list[str],
        meta: dict[str, Any],
        dtype: str,
        chunk_rows: int,
        label_map: np.ndarray,
        lock: Any = None,
    ) -> None:
        self.root, self.name, self.split = root, name, split
        self.kind, self.classes, self.dtype = kind, classes, dtype
        self.meta = clean_attrs(meta)
        self.store_classes = store_classes
        self.chunk_rows = min(chunk_rows, max(1, split.n))
        self.pred_labels = label_map[split.labels.astype(np.int64)]
        self.metrics = MetricAccumulator(kind)
        self.written = 0
        self.lock = lock  # held from creation until close or abort
        self.group: zarr.Group | None = None
        self._filled = np.zeros(0, dtype=bool)
        self._data: ChunkGatherer | None = None
        self._votes: ChunkGatherer | None = None

    @property
    def id(self) -> str:
        return f"{self.name}/{self.split.name}"

    def __enter__(self) -> PredictionWriter:
        n, k = self.split.n, len(self.classes)
        g = self.root.require_group(f"predictions/{self.name}/{self.split.name}")
        attrs = {
            **self.meta,
            "kind": self.kind,
            "split": self.split.name,
            "split_fingerprint": self.split.fingerprint,
            "complete": False,
        }
        if self.classes != self.store_classes:
            attrs["classes"] = list(self.classes)
        g.attrs.put(attrs) if hasattr(g.attrs, "put") else g.attrs.update(attrs)
        if self.kind == "labels":
            arr = g.create_array(
                "label", shape=(n,), dtype="int32", chunks=(self.chunk_rows,), compressors=None
            )
        else:
            arr = g.create_array(
                "scores",
                shape=(n, k),
                dtype=self.dtype,
                chunks=(self.chunk_rows, k),
                compressors=None,
            )
        self.group = g
        self._data = ChunkGatherer(RowChunks(arr))
        self._filled = np.zeros(n, dtype=bool)
        return self

    def _check_block(self, block: np.ndarray, start: int) -> None:
        k = len(self.classes)
        if self.kind != "labels" and (block.ndim != 2 or block.shape[1] != k):
            raise StoreError(
                f"{self.id}: scores block of shape {block.shape}, expected [rows, {k}]"
            )
        if start + len(block) > self.split.n:
            raise StoreError(f"{self.id}: more rows than the split's {self.split.n} samples")

    def _stored(self, block: np.ndarray) -> np.ndarray:
        """The block as it will be stored, refused if any stored value is NaN or Inf."""
        if self.kind == "labels":
            if block.size and (block.min() < 0 or block.max() >= len(self.classes)):
                raise StoreError(f"{self.id}: labels outside 0..{len(self.classes) - 1}")
            return np.ascontiguousarray(block, dtype=np.int32)
        with np.errstate(over="ignore"):  # overflow to float16 Inf is refused just below
            stored = np.ascontiguousarray(block, dtype=self.dtype)
        if all_finite(stored):
            return stored
        bad = int((~np.isfinite(stored)).any(axis=1).sum())
        if np.isfinite(block).all():  # finite scores that float16 cannot hold
            raise StoreError(
                f"{self.id}: {bad} rows hold scores beyond float16's range (±65504); "
                "write them with dtype float32, nothing was written"
            )
        raise StoreError(
            f"{self.id}: {bad} rows hold NaN or Inf scores; the producer "
            "diverged or the import is broken, nothing was written"
        )

    def write(self, block: np.ndarray) -> None:
        """Append the next row block."""
        self.write_at(self.written, block)
        self.written += len(block)

    def write_at(self, start: int, block: np.ndarray) -> None:
        """Write a row block at ``start`` (blocks may arrive in any order)."""
        block = np.asarray(block)
        self._check_block(block, start)
        stored = self._stored(block)
        data = self._data or self._attached("label" if self.kind == "labels" else "scores")
        data.put(start, stored)
        if data is not self._data:
            data.flush()
        self._update_metrics(start, stored)
        if len(self._filled):
            self._filled[start : start + len(stored)] = True

    def _attached(self, key: str) -> ChunkGatherer:
        """The array of a prediction this writer did not open (another process's writer holds
        it and publishes it); nothing is gathered, since this writer is never closed."""
        assert self.group is not None, "use the writer as a context manager"
        return ChunkGatherer(RowChunks(self.group[key]))

    def _update_metrics(self, start: int, stored: np.ndarray) -> None:
        """Metrics of what is stored, on rows with a known label, a bounded slice at a time."""
        labels = self.pred_labels[start : start + len(stored)]
        if not (labels >= 0).any():
            return
        for lo in range(0, len(stored), METRIC_ROWS):
            part, known = stored[lo : lo + METRIC_ROWS], labels[lo : lo + METRIC_ROWS]
            if (known >= 0).any():
                if part.dtype == np.float16:
                    part = widen_float16(part, np.empty(part.shape, np.float32))
                self.metrics.update(part, known)

    def write_labels(self, labels: np.ndarray, votes: np.ndarray | None = None) -> None:
        """Write all labels (and optional vote counts [N, K]) at once."""
        self.write(labels)
        if votes is not None:
            self.write_votes_at(0, votes)

    def write_votes_at(self, start: int, block: np.ndarray) -> None:
        """Write vote counts [rows, K] of a labels prediction at row ``start``."""
        assert self.group is not None, "use the writer as a context manager"
        block = np.ascontiguousarray(block, dtype=np.float32)
        k = len(self.classes)
        if block.ndim != 2 or block.shape[1] != k or start + len(block) > self.split.n:
            raise StoreError(
                f"{self.id}: votes block of shape {list(block.shape)} at row {start} "
                f"does not fit [{self.split.n}, {k}]"
            )
        if self._votes is None and self._data is None:  # attached (see ``_attached``)
            votes = self._attached("votes")
            votes.put(start, block)
            votes.flush()
            return
        if self._votes is None:
            arr = self.group.create_array(
                "votes",
                shape=(self.split.n, k),
                dtype="float32",
                chunks=(self.chunk_rows, k),
                compressors=None,
            )
            self._votes = ChunkGatherer(RowChunks(arr))
        self._votes.put(start, block)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close(exc_type)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _close(self, exc_type) -> None:
        if exc_type is not None:
            self.abort()
            return
        for gatherer in (self._data, self._votes):
            if gatherer is not None:
                gatherer.flush()
        if not self._filled.all():
            missing = int((~self._filled).sum())
            self.abort()
            raise StoreError(f"{self.id}: {missing} of {self.split.n} rows were never written")
        assert self.group is not None
        try:
            self.group.attrs.update(
                {
                    "metrics": self.metrics.result(),
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
            )
            self.group.attrs.update({"complete": True})
        except BaseException:
            with contextlib.suppress(OSError):  # a full or read-only disk may refuse this too
                self.abort()
            raise

    def abort(self) -> None:
        key = f"predictions/{self.name}/{self.split.name}"
        if key in self.root:
            del self.root[key]
        parent = f"predictions/{self.name}"
        if parent in self.root and not list(self.root[parent].group_keys()):
            del self.root[parent]
