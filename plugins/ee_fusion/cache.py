"""Fit-time caches: selected rows of every input, held as float32 or, when large, as bfloat16.

Fitting a meta-learner or running ensemble selection needs every class score of every input on
the fit rows, [rows, inputs, classes]: 20000 × 66 × 1000 is 5.3 GB in float32. Beyond
``FLOAT32_CACHE_LIMIT`` elements the cache keeps bfloat16 (the upper 16 bits of a float32):
half the memory, and widening back is a bit shift, as fast as a copy (numpy's float16
conversion is several times slower and would dominate each pass of the optimiser). Its 8-bit
mantissa (relative error ≤ 0.4 %) is ample for fitting a few dozen weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ensemble_engine import GraphError, InputChunk, InputSource

#: Caches up to this many elements (512 MiB) stay float32.
FLOAT32_CACHE_LIMIT = 1 << 27


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def from_bfloat16(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits (uint16) → float32, into ``out`` when given."""
    if out is None:
        out = np.empty(bits.shape, dtype=np.float32)
    np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


class Cache:
    """A float32 array of ``shape`` stored as float32, or as bfloat16 past ``limit`` elements."""

    def __init__(self, shape: tuple[int, ...], limit: int = FLOAT32_CACHE_LIMIT) -> None:
        self.compact = int(np.prod(shape)) > limit
        self.data = np.empty(shape, dtype=np.uint16 if self.compact else np.float32)

    @classmethod
    def of(cls, values: np.ndarray, limit: int = FLOAT32_CACHE_LIMIT) -> Cache:
        """A cache holding ``values`` (tests, data already in memory)."""
        cache = cls(values.shape, limit)
        cache.put(slice(None), values)
        return cache

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: object) -> np.ndarray:
        return self.get(index)

    def put(self, index: object, values: np.ndarray) -> None:
        self.data[index] = to_bfloat16(values) if self.compact else values

    def get(self, index: object, out: np.ndarray | None = None) -> np.ndarray:
        """float32 values at ``index``: a view if stored as float32, else widened (into ``out``)."""
        part = self.data[index]
        if not self.compact:
            return part
        return from_bfloat16(part, None if out is None else out[: len(part)])


def subsample_rows(n_rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded uniform sample of ``max_rows`` of them."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))


def gather_rows(
    source: InputSource,
    rows: np.ndarray,
    transform: Callable[[InputChunk], np.ndarray],
    put: Callable[[np.ndarray, np.ndarray], None],
) -> None:
    """Stream ``source``; call ``put(positions, transform(chunk)[selected])`` for sorted ``rows``.

    ``positions`` index ``rows`` (0..len(rows)), so the caller decides where each row lands.
    Only the selected rows are kept: a subsampled fit never holds a whole input in memory.
    """
    filled = 0
    for block, chunk in source.iter_chunks():
        lo, hi = np.searchsorted(rows, [block.start, block.stop])
        if hi > lo:
            put(np.arange(lo, hi), transform(chunk)[rows[lo:hi] - block.start])
            filled += hi - lo
    if filled != len(rows):
        raise GraphError(
            f"input {source.id!r} has fewer rows than the fit split's labels; "
            "its predictions do not cover the whole split"
        )


def gather_by_input(
    sources: Sequence[InputSource],
    rows: np.ndarray,
    n_classes: int,
    transform: Callable[[InputChunk], np.ndarray],
    limit: int = FLOAT32_CACHE_LIMIT,
) -> Cache:
    """[inputs, rows, classes] cache of ``transform`` over the sorted ``rows`` of every input."""
    cache = Cache((len(sources), len(rows), n_classes), limit)
    for i, source in enumerate(sources):
        gather_rows(source, rows, transform, lambda pos, v, i=i: cache.put((i, pos), v))
    return cache


def gather_by_row(
    sources: Sequence[InputSource],
    rows: np.ndarray,
    n_classes: int,
    transform: Callable[[InputChunk], np.ndarray],
    order: np.ndarray | None = None,
    limit: int = FLOAT32_CACHE_LIMIT,
) -> Cache:
    """[rows, inputs, classes] cache; row ``order[j]`` of ``rows`` lands at position j.

    Row-major layout keeps each row block contiguous for the pooled-NLL passes.
    """
    where = np.arange(len(rows)) if order is None else np.argsort(order)
    cache = Cache((len(rows), len(sources), n_classes), limit)
    for i, source in enumerate(sources):
        gather_rows(source, rows, transform, lambda pos, v, i=i: cache.put((where[pos], i), v))
    return cache
