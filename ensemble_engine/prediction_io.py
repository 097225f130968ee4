"""Writing one prediction row block by row block, made visible only when complete."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StoreError
from .metrics import MetricAccumulator

if TYPE_CHECKING:
    import zarr

    from .store import Split

# Rows per chunk: about 2 MiB of scores, all classes of a row in one chunk, so a row-streaming
# reader touches each chunk exactly once.
TARGET_CHUNK_BYTES = 2 * 1024 * 1024


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
            g.create_array(
                "label", shape=(n,), dtype="int32", chunks=(self.chunk_rows,), compressors=None
            )
        else:
            g.create_array(
                "scores",
                shape=(n, k),
                dtype=self.dtype,
                chunks=(self.chunk_rows, k),
                compressors=None,
            )
        self.group = g
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
        if self.kind != "labels":
            bad = int((~np.isfinite(block)).any(axis=1).sum())
            if bad:
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
        assert self.group is not None, "use the writer as a context manager"
        block = np.asarray(block)
        self._check_block(block, start)
        rows = slice(start, start + len(block))
        if self.kind == "labels":
            if block.size and (block.min() < 0 or block.max() >= len(self.classes)):
                raise StoreError(f"{self.id}: labels outside 0..{len(self.classes) - 1}")
            self.group["label"][rows] = block.astype(np.int32)
        else:
            self.group["scores"][rows] = block.astype(self.dtype)
            block = np.asarray(
                block.astype(self.dtype), dtype=np.float32
            )  # metrics of what is stored
        self.metrics.update(block, self.pred_labels[rows])
        self._filled[rows] = True

    def write_labels(self, labels: np.ndarray, votes: np.ndarray | None = None) -> None:
        """Write all labels (and optional vote counts [N, K]) at once."""
        self.write(labels)
        if votes is not None:
            self.write_votes_at(0, votes)

    def write_votes_at(self, start: int, block: np.ndarray) -> None:
        """Write vote counts [rows, K] of a labels prediction at row ``start``."""
        assert self.group is not None, "use the writer as a context manager"
        block = np.asarray(block, dtype=np.float32)
        k = len(self.classes)
        if block.ndim != 2 or block.shape[1] != k or start + len(block) > self.split.n:
            raise StoreError(
                f"{self.id}: votes block of shape {list(block.shape)} at row {start} "
                f"does not fit [{self.split.n}, {k}]"
            )
        if "votes" not in self.group:
            self.group.create_array(
                "votes",
                shape=(self.split.n, k),
                dtype="float32",
                chunks=(self.chunk_rows, k),
                compressors=None,
            )
        self.group["votes"][start : start + len(block)] = block

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
        if not self._filled.all():
            missing = int((~self._filled).sum())
            self.abort()
            raise StoreError(f"{self.id}: {missing} of {self.split.n} rows were never written")
        assert self.group is not None
        self.group.attrs.update(
            {
                "metrics": self.metrics.result(),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        self.group.attrs.update({"complete": True})

    def abort(self) -> None:
        key = f"predictions/{self.name}/{self.split.name}"
        if key in self.root:
            del self.root[key]
        parent = f"predictions/{self.name}"
        if parent in self.root and not list(self.root[parent].group_keys()):
            del self.root[parent]
