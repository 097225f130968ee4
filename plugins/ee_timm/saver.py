"""Run-folder files written off the training thread, one epoch's files at a time, in order.

Writing ``last.pth`` (weights, optimiser state, RNG: ~90 MB for a resnet18) and ``best.pth``
every epoch costs a noticeable part of a short epoch, and the training thread need not wait for
it. ``CheckpointSaver.submit`` takes a snapshot of the state on the host (``host_copy``: on CUDA
a copy to the host of every tensor, on CPU a clone, since training goes on changing the live
tensors in place; into the same buffers every epoch) and hands the writing to one background
thread. Before it queues the next epoch's
files it waits for the previous ones, so at most one epoch is in flight, files land in the
order they were submitted, and a write error surfaces on the training thread at the next
``submit`` or ``wait``. Each file is still written atomically (``checkpoint._write_atomic``:
a temporary name, then a rename), so a ``kill -9`` leaves the previous epoch's complete files.
Leaving the ``with`` block waits for the last write, on success and on error alike.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def host_copy(value: Any, buffers: dict[tuple, torch.Tensor] | None = None, at: tuple = ()) -> Any:
    """``value`` with every tensor replaced by a copy on the host, through dicts, lists, tuples.

    The copy is a snapshot: training may change the originals in place right after. With
    ``buffers`` (position in ``value`` → host tensor), a tensor is copied into the buffer kept
    for its position when shape and dtype match, and the buffer is kept otherwise: a run's
    snapshots, alike epoch after epoch, reuse the same memory instead of faulting in fresh
    pages for ~100 MB each time. The caller must no longer need the previous snapshot.
    """
    if isinstance(value, torch.Tensor):
        if buffers is None:
            return value.detach().to("cpu", copy=True)
        kept = buffers.get(at)
        if kept is None or kept.shape != value.shape or kept.dtype != value.dtype:
            kept = buffers[at] = torch.empty(value.shape, dtype=value.dtype)
        return kept.copy_(value.detach())
    if isinstance(value, dict):
        return {key: host_copy(item, buffers, (*at, key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(item, buffers, (*at, i)) for i, item in enumerate(value))
    return value


class CheckpointSaver:
    """One background writer; use as a context manager (leaving it waits for the last write)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._buffers: dict[tuple, torch.Tensor] = {}  # snapshot memory, reused (host_copy)

    def __enter__(self) -> CheckpointSaver:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ee-checkpoint")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._pool is not None
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise  # the write failed: the run's files are not what it reports
            # already failing: the training error is the one to see
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None

    def submit(self, write: Callable[..., None], *states: Any) -> None:
        """Call ``write(*copies)`` in the background, ``copies`` being ``host_copy`` snapshots
        of ``states`` taken now; first waits for the previous write (raising its error)."""
        if self._pool is None:
            raise RuntimeError("CheckpointSaver.submit outside its with block")
        self.wait()  # the previous snapshot is written: its buffers are free again
        copies = [host_copy(state, self._buffers, (i,)) for i, state in enumerate(states)]
        self._pending = self._pool.submit(write, *copies)

    def wait(self) -> None:
        """Block until the submitted write is on disk; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
