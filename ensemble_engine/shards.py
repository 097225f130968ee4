"""Predictions written by several processes at once, each process its own whole chunks of rows.

A producer run by torchrun predicts with N processes (ranks). They write one prediction as a
single writer would, in three steps:

1. rank 0, the *owner*, opens the prediction's writers (lock, old output removed, arrays and
   attrs with ``complete: false``) and tells every rank where to write (``WriterSpec``);
2. every rank predicts its share of the rows (``chunk_ranges``: whole chunks of the arrays, so
   no two processes write one chunk object) and writes it with ``write_at`` through an
   *attached* writer, which is never entered or closed; each metrics update it makes is kept
   apart (``MetricParts``);
3. the parts go to rank 0, which adds them in row order (the additions a single writer makes,
   in the same order) and closes the writers, so ``complete: true`` is still written last.

A failure on any rank, at any step, reaches every rank (``on_rank0``), so no rank waits for
one that stopped, and rank 0 aborts its writers: no complete prediction is left behind.
``graph.parallel`` (``ee combine --workers K``) shares ``MetricParts`` and ``add_metrics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from .metrics import MetricAccumulator
from .prediction_io import PredictionWriter
from .records import label_map

if TYPE_CHECKING:
    from .store import PredictionStore

T = TypeVar("T")
Writers = Mapping[Hashable, PredictionWriter]


class Group(Protocol):
    """The processes that write together (e.g. a torch.distributed process group)."""

    rank: int
    size: int

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass None)."""

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order; None on the other ranks."""


def chunk_ranges(n: int, step: int, parts: int) -> list[range]:
    """``parts`` consecutive ranges of whole ``step``-row chunks that cover rows 0 to ``n``.

    The chunks are dealt as evenly as they go, earlier ranges taking the spare ones; ranges
    beyond the last chunk are empty (more processes than chunks).
    """
    if step < 1 or parts < 1:
        raise ValueError(f"chunk rows and parts must be >= 1, not {step} and {parts}")
    chunks = -(-n // step)
    bounds = [-(-i * chunks // parts) for i in range(parts + 1)]
    return [range(min(n, a * step), min(n, b * step)) for a, b in pairwise(bounds)]


def shard_chunk_rows(n: int, base: int, multiple: int, parts: int) -> int:
    """Rows per chunk of a prediction that ``parts`` processes write, each in batches.

    A multiple of ``multiple`` (the batch size), so that every process's batches are those a
    single process makes; at most ``base`` (the store's usual chunk, rounded down to a batch);
    and as close as that allows to an even cut of each process's share into whole chunks, so
    no process gets a chunk more than the others where the rows allow.
    """
    cap = max(multiple, base // multiple * multiple)
    share = _ceil_div(n, parts)
    pieces = max(1, _ceil_div(share, cap))  # chunks per process
    return max(multiple, _ceil_div(_ceil_div(share, pieces), multiple) * multiple)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class WriterSpec:
    """What a rank needs to write into a prediction that rank 0 opened."""

    name: str
    split: str
    kind: str
    classes: list[str]
    dtype: str
    chunk_rows: int
    rows: int
    path: str  # where the owner's writer puts the arrays (a replace's staged copy)

    @classmethod
    def of(cls, writer: PredictionWriter) -> WriterSpec:
        return cls(
            writer.name, writer.split.name, writer.kind, list(writer.classes), writer.dtype,
            writer.chunk_rows, writer.split.n, writer.path,
        )  # fmt: skip


class MetricParts:
    """Stands in for an attached writer's accumulator: each ``update`` (a writer makes one per
    slice of rows it writes) is kept as an accumulator of its own, to be added up in order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parts: list[MetricAccumulator] = []

    def update(self, block: np.ndarray, labels: np.ndarray) -> None:
        part = MetricAccumulator(self.kind)
        part.update(block, labels)
        self.parts.append(part)


def add_metrics(total: MetricAccumulator, part: MetricAccumulator) -> None:
    """Add one update's counts and sums. A part's ``nll`` is ``0.0 - s`` for its sum ``s``, and
    ``x + (0.0 - s) == x - s`` exactly in floating point: added in the writer's order, the total
    is bit for bit one writer's running ``nll -= s``."""
    for f in dataclasses.fields(total):
        if f.name != "kind":
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def attached_writer(store: PredictionStore, spec: WriterSpec) -> PredictionWriter:
    """A writer onto the prediction another process opened, for ``write_at`` only.

    It is never entered or closed: the owner holds the lock, writes the attrs and
    ``complete: true``. Its metrics are ``MetricParts``, for the owner to add up.
    """
    writer = PredictionWriter(
        store.group, spec.name, store.split_header(spec.split), kind=spec.kind,
        classes=list(spec.classes), store_classes=store.classes, meta={}, dtype=spec.dtype,
        chunk_rows=spec.chunk_rows, label_map=label_map(store.classes, spec.classes),
    )  # fmt: skip
    writer.path = spec.path
    writer.group = store.group[spec.path]
    writer.metrics = MetricParts(spec.kind)  # type: ignore[assignment]
    return writer


def record_rows(owner: PredictionWriter, rows: range, parts: Sequence[MetricAccumulator]) -> None:
    """Tell the owner what another process wrote: its rows and its metric parts, in order."""
    for part in parts:
        add_metrics(owner.metrics, part)
    owner._filled[rows.start : rows.stop] = True  # written through an attached writer


class ChunkedRows:
    """Row blocks of one process's range in; ``write_at`` of whole chunks out.

    An attached writer sends each block to its array at once, and a block smaller than a
    chunk costs a read-modify-write of that chunk. Blocks are held here until their chunk is
    full (or ``flush``), so each chunk is written once.
    """

    def __init__(self, writer: PredictionWriter, step: int) -> None:
        self.writer, self.step = writer, step
        self.start, self.stop = 0, 0
        self.blocks: list[np.ndarray] = []

    def write_at(self, start: int, block: np.ndarray) -> None:
        if self.blocks and start != self.stop:
            self.flush()
        if not self.blocks:
            self.start = self.stop = start
        self.blocks.append(np.asarray(block))
        self.stop += len(block)
        chunk_end = (self.start // self.step + 1) * self.step
        if self.stop >= min(chunk_end, self.writer.split.n):
            self.flush()

    def flush(self) -> None:
        if self.blocks:
            self.writer.write_at(self.start, np.concatenate(self.blocks))
        self.blocks = []


def on_rank0(group: Group | None, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; every rank returns its result or raises its error.

    The outcome is broadcast, so a failure on rank 0 stops the other ranks at once instead of
    leaving them to wait for it at the next collective step. Without a group, just ``fn()``.
    """
    if group is None or group.size == 1:
        return fn()
    result, error = None, None
    if group.rank == 0:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    sent = group.broadcast((result, _portable(error)) if group.rank == 0 else None)
    if error is not None:
        raise error
    if sent[1] is not None:
        raise sent[1]
    return sent[0]


def _portable(exc: BaseException | None) -> BaseException | None:
    """``exc`` if it survives pickling (to reach the other ranks), else a RuntimeError naming it."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def write_sharded(
    store: PredictionStore,
    group: Group,
    open_writers: Callable[[], Writers],
    fill: Callable[[Writers, range], None],
) -> list[str]:
    """Write one or more predictions of one split with every rank of ``group``; their ids.

    ``open_writers()`` runs on rank 0 only and returns the owner's writers, not yet entered
    (``PredictionStore.prediction_writer``), all with the same chunk rows. ``fill(writers,
    rows)`` runs on every rank with attached writers under the same keys: it writes rows
    ``rows`` of each (whole chunks, see ``ChunkedRows``) with ``write_at``.
    """
    with contextlib.ExitStack() as owned:
        owners: dict[Hashable, PredictionWriter] = {}

        def open_all() -> dict[Hashable, WriterSpec]:
            for key, writer in open_writers().items():
                owners[key] = owned.enter_context(writer)
            specs = {key: WriterSpec.of(w) for key, w in owners.items()}
            if len({(s.chunk_rows, s.rows) for s in specs.values()}) > 1:
                raise ValueError("predictions written together need the same rows and chunks")
            return specs

        specs = on_rank0(group, open_all)
        first = next(iter(specs.values()))
        rows = chunk_ranges(first.rows, first.chunk_rows, group.size)[group.rank]
        mine: dict[Hashable, list[MetricAccumulator]] | BaseException
        try:
            writers = {key: attached_writer(store, spec) for key, spec in specs.items()}
            if len(rows):
                fill(writers, rows)
            mine = {key: w.metrics.parts for key, w in writers.items()}  # type: ignore[attr-defined]
        except Exception as exc:
            mine = exc
        gathered = group.gather((rows, _portable(mine) if isinstance(mine, Exception) else mine))

        def close() -> None:
            for _, outcome in gathered or ():
                if isinstance(outcome, BaseException):
                    raise outcome
            for key, owner in owners.items():
                for part_rows, outcome in gathered or ():
                    record_rows(owner, part_rows, outcome[key])
            owned.close()  # publishes: complete: true last (an error aborts the rest)

        try:
            on_rank0(group, close)
        except Exception:
            if isinstance(mine, Exception):
                raise mine from None  # this rank's own error, with its traceback
            raise
    return [f"{s.name}/{s.split}" for s in specs.values()]
