"""Training the demo's models side by side: one process per core, one thread per process.

Tiny models on 32-pixel images keep a core busy mostly with Python (image decoding, crops,
per-layer dispatch), which more threads do not speed up; separate processes do. One thread per
run also makes each run's numbers independent of how many run at once, so the demo gives the
same store on one core or sixteen. Processes are spawned (not forked): a forked copy of a
process that already ran torch can deadlock in its thread pool.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainTask:
    """Everything a worker needs to run ``ee produce`` for one model (picklable)."""

    recipe: str
    name: str
    data_dir: Path
    store: str
    runs_dir: Path
    overrides: dict[str, Any]
    subset: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainOutcome:
    name: str
    ids: list[str]
    seconds: float
    log: str  # what the producer printed, for --verbose and for failures


def run_task(task: TrainTask) -> TrainOutcome:
    """Run one producer in this process, quietly (its console output is kept as text)."""
    import torch
    from rich.console import Console

    from ensemble_engine import ProduceRequest, get_registry, open_store

    torch.set_num_threads(1)
    log = io.StringIO()
    started = time.perf_counter()
    request = ProduceRequest(
        recipe=task.recipe,
        data_dir=task.data_dir,
        store=open_store(task.store, "a"),
        runs_dir=task.runs_dir,
        overrides=dict(task.overrides),
        subset=list(task.subset) or None,
        console=Console(file=log, width=100, force_terminal=False),
        name=task.name,
    )
    producer = get_registry("producers").get("timm").factory()
    with contextlib.redirect_stderr(log):  # e.g. "waiting for a lock" while another run writes
        ids = producer.produce(request)
    return TrainOutcome(task.name, ids, time.perf_counter() - started, log.getvalue())


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(
    tasks: Sequence[TrainTask], workers: int, on_done: Callable[[TrainOutcome], None]
) -> list[TrainOutcome]:
    """Run ``tasks`` in ``workers`` processes (in this one when 1); results in task order.

    ``on_done`` sees each outcome as it finishes. The first failure stops the rest and is
    raised here, with the failing run's own message.
    """
    if workers <= 1 or len(tasks) <= 1:
        outcomes = []
        for task in tasks:
            outcomes.append(run_task(task))
            on_done(outcomes[-1])
        return outcomes
    by_task: dict[Future, int] = {}
    results: dict[int, TrainOutcome] = {}
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=get_context("spawn")) as pool:
        for index, task in enumerate(tasks):
            by_task[pool.submit(run_task, task)] = index
        try:
            for future in as_completed(by_task):
                outcome = future.result()
                results[by_task[future]] = outcome
                on_done(outcome)
        except BaseException:
            for future in by_task:
                future.cancel()
            raise
    return [results[i] for i in range(len(tasks))]
