"""Parallel combine: the rows of a node's split written by several processes at once.

``execute(plan, store, workers=K)`` hands every split of a node to a ``SplitPool``. The rows
after the first block are cut into K ranges of whole output chunks; each worker streams its range
(reading each input from the stored chunk that holds the range's first row, never the chunks
before it) and writes its row blocks with ``PredictionWriter.write_at`` into the one prediction
the parent opened. Ranges are whole chunks, so no two processes write the same chunk object.

What stays in the parent, so that the result is the one a single process writes:

- fitting: a combiner is fitted once, on the fit split, and the fitted object is pickled to the
  workers. Refitting in each worker would read the fit split K more times and would be only as
  deterministic as the plugin's fit;
- the writer and the first block: the parent applies the combiner to the first row block and
  opens the writer (lock, old output removed, arrays created, lineage) as a single writer
  does; the workers write the other blocks, and the parent closes the writer after they have
  all finished, so ``complete: true`` is still written last;
- metrics: a worker returns one accumulator per metrics update its writer made and the parent
  adds them up in row order: the same additions, in the same order, as a single writer makes,
  so the stored metrics are bit for bit those of a single process.

Workers are started with the "spawn" context (no forked copies of zarr's or torch's threads),
once per run, when the first split worth dividing comes. A split of one block, a combiner that
does not pickle, and a store in this process's memory (``memory://``) are written by the parent.
As with any "spawn" start, a script that calls ``execute(..., workers=K)`` at its top level
needs the ``if __name__ == "__main__":`` guard: each worker imports the script's main module.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..chunks import RowChunks
from ..combiner import Combiner
from ..errors import GraphError, StoreError
from ..metrics import MetricAccumulator
from ..prediction_io import PredictionWriter
from ..shards import MetricParts, add_metrics
from ..store import PredictionStore, Split, open_store
from . import runner
from .planner import PlannedNode

PROCESS_LOCAL = ("memory://",)  # stores another process cannot see


@dataclass(frozen=True)
class RangeTask:
    """What a worker needs to write rows [start, stop) of one node on one split."""

    node: PlannedNode
    combiner: bytes  # the parent's fitted combiner, pickled after the split's first block
    split: str
    on_fit_split: bool
    metas: dict[str, dict[str, Any]]  # input name → its attrs on this split (what fit saw)
    classes: list[str]
    step: int  # rows per block = rows per output chunk
    start: int
    stop: int


@dataclass(frozen=True)
class BlockResult:
    """What a worker reports of one row block it wrote."""

    start: int
    stop: int
    metrics: list[MetricAccumulator]  # one per update the writer made, in order
    votes: bool


def block_ranges(n: int, step: int, parts: int, skip: int = 0) -> list[tuple[int, int]]:
    """Up to ``parts`` contiguous [start, stop) ranges of whole ``step``-row blocks covering
    rows ``skip * step`` to ``n``, as even in blocks as they can be."""
    blocks = -(-n // step) - skip
    parts = max(1, min(parts, blocks))
    bounds = [skip + i * blocks // parts for i in range(parts + 1)]
    return [(a * step, min(n, b * step)) for a, b in zip(bounds, bounds[1:], strict=False)]


class SplitPool:
    """Worker processes for one run; ``write_split`` is False where the parent should write."""

    def __init__(self, store: PredictionStore, workers: int) -> None:
        if workers < 1:
            raise GraphError(f"workers must be at least 1, not {workers}")
        self.store, self.workers = store, workers
        self.enabled = workers > 1 and not store.path.startswith(PROCESS_LOCAL)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> SplitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        """The workers, started on first use; they import and open the store meanwhile."""
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.store.path, os.getpid()),
            )
            for _ in range(self.workers):  # one process per task submitted: start them all now
                self._executor.submit(_ready)
        return self._executor

    def write_split(
        self, run: runner.RunState, pn: PlannedNode, combiner: Combiner, split: str
    ) -> bool:
        """Write ``pn`` on ``split`` with the workers; False (nothing done) if not worth it.

        The parent writes the first block itself, as a single writer does, so the output's
        kind, its votes array and the lineage (a combiner may note facts in its first
        ``apply``) are settled before the workers write the remaining blocks.
        """
        plan, n = run.plan, run.splits[split].n
        step = runner.chunk_rows_for(len(plan.classes), 4)  # the blocks a single writer uses
        if not self.enabled or n <= step or _pickled(combiner) is None:
            return False
        on_fit = split == plan.fit
        pool = self._pool()  # workers start while the parent computes the first block
        readers = {
            role: [runner.RowReader(run.source(ref, split)) for ref in refs]
            for role, refs in pn.roles.items()
        }
        first = runner.apply_block(pn, combiner, readers, slice(0, step), on_fit)
        with run.store.prediction_writer(
            pn.id,
            split,
            kind=first.kind,
            meta=runner.lineage(plan, pn, combiner, run.cost(pn, split, combiner)),
            dtype="float32",
            replace=True,
            chunk_rows=step,
        ) as writer:
            writer.write_at(0, first.labels if first.kind == "labels" else first.scores)
            if first.votes is not None:
                writer.write_votes_at(0, first.votes)
            blob = pickle.dumps(combiner)  # as it is now: fitted, and after its first apply
            metas = {r.name: run.attrs(r.name, split) for refs in pn.roles.values() for r in refs}
            tasks = [
                RangeTask(pn, blob, split, on_fit, metas, list(plan.classes), step, a, b)
                for a, b in block_ranges(n, step, self.workers, skip=1)
            ]
            try:
                blocks = _gather([pool.submit(_write_range, t) for t in tasks])
            except BrokenProcessPool:
                raise StoreError(
                    f"{pn.id}/{split}: a combine worker process stopped (out of memory, or "
                    "it could not open the store: its error is printed above); "
                    "rerun with --workers 1"
                ) from None
            _record(writer, pn, blocks, votes=first.votes is not None)
        return True


def _pickled(combiner: Combiner) -> bytes | None:
    try:
        return pickle.dumps(combiner)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None  # e.g. a class defined inside a function: the parent writes it


def _gather(futures: list[Future]) -> list[BlockResult]:
    """Every worker's blocks in row order; the first failure cancels the rest and is raised."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f.exception() for f in futures if f in done and f.exception() is not None]
    if failed:
        for f in pending:
            f.cancel()
        wait(pending)  # nobody may still write when the parent removes the partial output
        raise failed[0]
    return sorted((b for f in futures for b in f.result()), key=lambda b: b.start)


def _record(
    writer: PredictionWriter, pn: PlannedNode, blocks: list[BlockResult], votes: bool
) -> None:
    """Tell the parent's writer what the workers wrote: rows and metrics, in row order."""
    if any(b.votes != votes for b in blocks):
        raise GraphError(
            f"combiner {pn.combiner} returned votes for some row blocks only; fix the plugin"
        )
    for b in blocks:
        for part in b.metrics:
            add_metrics(writer.metrics, part)
        writer._filled[b.start : b.stop] = True  # written by a worker through write_at


# --- in the worker processes --------------------------------------------------------------------

_worker: dict[str, Any] = {}  # the store this process writes to, and the splits it has read


def _start_worker(store_path: str, parent_pid: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _worker["store"] = open_store(store_path, "a")
    _worker["splits"] = {}


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose parent was killed (kill -9 leaves no chance to stop it) exits too."""
    if parent_pid == os.getpid():  # run in-process (threads standing in for workers)
        return
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _ready() -> None:
    """A first task that makes the pool start its process (each one runs ``_start_worker``)."""


def _split(name: str) -> Split:
    splits: dict[str, Split] = _worker["splits"]
    if name not in splits:
        splits[name] = _worker["store"].split(name)
    return splits[name]


def _write_range(task: RangeTask) -> list[BlockResult]:
    """Compute and write rows [start, stop) block by block, exactly as ``_write_split`` does."""
    store: PredictionStore = _worker["store"]
    combiner: Combiner = pickle.loads(task.combiner)
    writer = _attached_writer(store, task, _split(task.split))
    as_stored = bool(getattr(combiner, "scores_as_stored", False))  # as the parent reads them
    readers = {
        role: [
            RangeReader(
                runner.StoreInput(store, ref, task.split, task.metas[ref.name]),
                task.start,
                as_stored,
            )
            for ref in refs
        ]
        for role, refs in task.node.roles.items()
    }
    results = []
    for start in range(task.start, task.stop, task.step):
        rows = slice(start, min(task.stop, start + task.step))
        out = runner.apply_block(task.node, combiner, readers, rows, task.on_fit_split)
        parts = MetricParts(out.kind)
        writer.metrics = parts  # type: ignore[assignment]  # what the writer's updates were
        writer.write_at(start, out.labels if out.kind == "labels" else out.scores)
        if out.votes is not None:
            writer.write_votes_at(start, out.votes)
        results.append(BlockResult(start, rows.stop, parts.parts, out.votes is not None))
    return results


def _attached_writer(store: PredictionStore, task: RangeTask, split: Split) -> PredictionWriter:
    """A writer onto the prediction the parent opened, used for ``write_at`` only.

    It is never entered or closed: the parent's writer holds the lock, writes the attrs and
    ``complete: true``. Node outputs cover the store's classes, so labels map to themselves.
    """
    k = len(task.classes)
    writer = PredictionWriter(
        store.group,
        task.node.id,
        split,
        kind=task.node.factory.output_kind,
        classes=task.classes,
        store_classes=store.classes,
        meta={},
        dtype="float32",
        chunk_rows=task.step,
        label_map=np.append(np.arange(k), -1),
    )
    writer.group = store.group[store.writing_path(task.node.id, split.name)]  # staged on replace
    return writer


class RangeReader(runner.RowReader):
    """A ``RowReader`` that starts at row ``start`` and never reads the chunks before it."""

    def __init__(self, source: runner.StoreInput, start: int, as_stored: bool = False) -> None:
        super().__init__(source, as_stored)
        self._chunks = _stored_blocks(source, start, as_stored)
        self._next = start


def _stored_blocks(
    source: runner.StoreInput, start: int, as_stored: bool
) -> Iterator[tuple[slice, np.ndarray]]:
    """The input's stored chunks from the one holding row ``start`` on (that one cut to begin
    there), as ``PredictionStore.iter_rows`` gives them: scores as float32 (as stored with
    ``as_stored``), labels as stored."""
    group = source.store.group[f"predictions/{source.id}/{source.split}"]
    chunks = RowChunks(group["label"] if source.kind == "labels" else group["scores"])
    dtype = None if source.kind == "labels" or as_stored else np.float32
    step, n = chunks.step, chunks.n
    for first in range(start - start % step, n, step):
        rows = slice(max(first, start), min(first + step, n))
        yield rows, chunks.read(rows.start, rows.stop, dtype=dtype)
