"""Writing one prediction: row blocks in, checked and counted, published when complete.

``PredictionWriter`` turns row blocks into stored chunks (``chunks.ChunkGatherer``), refuses NaN
and Inf (each chunk checked as it is written, while in cache; a refused prediction is removed
whole), keeps the metrics of what it stored, and writes ``complete: true`` last. The chunk I/O it
builds on lives in ``chunks.py`` (float16 kernels in ``float16.py``); its names are re-exported
here for the code that imports them from this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.codecs import Crc32cCodec

from .chunks import TARGET_CHUNK_BYTES, ChunkGatherer, RowChunks, chunk_rows_for
from .errors import StoreError
from .float16 import PASS_ITEMS, all_finite, widen_float16
from .io_pool import io_threads
from .local_nodes import WRITE_EMPTY, create_group_with_array, group_at, update_group_attrs
from .metrics import MetricAccumulator

if TYPE_CHECKING:
    import zarr

    from .records import Split, SplitHeader

__all__ = [
    "METRIC_ROWS",
    "PASS_ITEMS",
    "TARGET_CHUNK_BYTES",
    "ChunkGatherer",
    "PredictionWriter",
    "RowChunks",
    "all_finite",
    "chunk_rows_for",
    "clean_attrs",
    "reader_thread",
    "widen_float16",
]

# Rows per metrics update: log-softmax works in float64, so whole blocks would need GBs.
METRIC_ROWS = 1024
reader_thread = io_threads  # the name this module gave the I/O threads before


class _NotFinite(Exception):
    """A chunk's rows hold NaN or Inf (turned into the writer's StoreError)."""


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


class PredictionWriter:
    """Context manager: ``write`` row blocks in order (or ``write_at``), then close to publish.

    On an exception inside the ``with`` block the partial prediction is deleted; on a normal exit
    the row count is checked, metrics are stored and ``complete: true`` is written last.
    ``split`` needs only its name, labels and fingerprint: a ``SplitHeader`` or a ``Split``.
    ``path`` is where the arrays go: the prediction itself, or for a replace its staged copy,
    which ``publish`` swaps in once complete (``staging.py``); a refused or failed version is
    deleted there and the old one is never touched.
    """

    def __init__(
        self,
        root: zarr.Group,
        name: str,
        split: Split | SplitHeader,
        *,
        kind: str,
        classes: list[str],
        store_classes: list[str],
        meta: dict[str, Any],
        dtype: str,
        chunk_rows: int,
        label_map: np.ndarray,
        lock: Any = None,
        path: str | None = None,
        publish: Callable[[], None] | None = None,
    ) -> None:
        self.root, self.name, self.split = root, name, split
        self.final = f"predictions/{name}/{split.name}"
        self.path = path or self.final
        self.publish = publish
        self.kind, self.classes, self.dtype = kind, classes, dtype
        self.meta = clean_attrs(meta)
        # attrs known only once every row is written (a producer's measured images/s), set by
        # the caller before close: written with ``complete``, over ``meta``'s
        self.late_attrs: dict[str, Any] = {}
        self.store_classes = store_classes
        self.chunk_rows = min(chunk_rows, max(1, split.n))
        self.pred_labels = label_map[split.labels.astype(np.int64)]
        self.metrics = MetricAccumulator(kind)
        self.written = 0
        self.refused = False  # a block was refused: the prediction is removed, not published
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
        attrs = {
            **self.meta,
            "kind": self.kind,
            "split": self.split.name,
            "split_fingerprint": self.split.fingerprint,
            "complete": False,
        }
        if self.classes != self.store_classes:
            attrs["classes"] = list(self.classes)
        if self.kind == "labels":
            array = {
                "name": "label", "shape": (n,), "dtype": "int32", "chunks": (self.chunk_rows,),
                "dimension_names": ("sample",),
            }  # fmt: skip
        else:
            array = {
                "name": "scores", "shape": (n, k), "dtype": self.dtype,
                "chunks": (self.chunk_rows, k), "dimension_names": ("sample", "class"),
            }  # fmt: skip
        try:
            self.group, arr = create_group_with_array(self.root, self.path, attrs, array)
        except BaseException:  # no __exit__ follows: clean up and let the lock go here
            with contextlib.suppress(Exception):
                self.abort()
            if self.lock is not None:
                self.lock.release()
            raise
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
        """The block as it will be stored; finiteness is checked as it is written (``_finite``)."""
        if self.kind == "labels":
            if block.size and (block.min() < 0 or block.max() >= len(self.classes)):
                raise StoreError(f"{self.id}: labels outside 0..{len(self.classes) - 1}")
            return np.ascontiguousarray(block, dtype=np.int32)
        with np.errstate(over="ignore"):  # overflow to float16 Inf is refused by _finite
            return np.ascontiguousarray(block, dtype=self.dtype)

    @staticmethod
    def _finite(rows: np.ndarray) -> None:
        if not all_finite(rows):
            raise _NotFinite

    def _refusal(self, block: np.ndarray, stored: np.ndarray) -> StoreError:
        """Why ``stored`` (``block`` as stored) was refused: NaN/Inf, or beyond float16."""
        bad = int((~np.isfinite(stored)).any(axis=1).sum())
        if np.isfinite(block).all():  # finite scores that float16 cannot hold
            return StoreError(
                f"{self.id}: {bad} rows hold scores beyond float16's range (±65504); "
                "write them with dtype float32, nothing was written"
            )
        return StoreError(
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
        try:
            data.put(start, stored, None if self.kind == "labels" else self._finite)
        except _NotFinite:
            self.refused = True  # chunks of this block may be on disk: never publish
            raise self._refusal(block, stored) from None
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
                dimension_names=("sample", "class"),
                compressors=[Crc32cCodec()],
                config=WRITE_EMPTY,
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
        if exc_type is not None or self.refused:
            self.abort()
            if exc_type is None:
                raise StoreError(f"{self.id}: a block was refused earlier; nothing was written")
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
            # one atomic write of zarr.json: the metrics and ``complete`` together
            self.group = update_group_attrs(
                self.group,
                {
                    **clean_attrs(self.late_attrs),
                    "metrics": self.metrics.result(),
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "complete": True,
                },
            )
        except BaseException:
            with contextlib.suppress(OSError):  # a full or read-only disk may refuse this too
                self.abort()
            raise
        if self.publish is not None:
            # not aborted on failure: publish puts the old version back where it can, and
            # otherwise the next write of this prediction finishes the swap (staging.recover)
            self.publish()
            self.group = group_at(self.root, self.final, self.group)

    def abort(self) -> None:
        """Delete what this writer wrote: its own group only (a replace's staged copy)."""
        if self.path in self.root:
            del self.root[self.path]
        parent = f"predictions/{self.name}"
        if parent in self.root and not list(self.root[parent].group_keys()):
            del self.root[parent]
