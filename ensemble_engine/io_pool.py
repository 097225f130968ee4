"""The process's I/O threads, and ``in_parallel``: a large range moved in parts at once.

Reading and writing chunk files and widening float16 release the GIL (system calls and numpy's
loops), so parts of one range run on several cores: on two cores, reading or writing a
[50 000, 1000] float16 prediction in two parts took 0.6-1.0x the time of one part after the
other, the less gain the busier the machine (schemas/README.md, "Container").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

# Below this many bytes a range is moved by the calling thread alone: handing a part to another
# thread costs about 0.1 ms, the time to copy half a MiB.
PARALLEL_BYTES = 4 * 1024 * 1024
# More threads than this bought nothing: a local disk's page cache copies saturate memory first.
MAX_IO_THREADS = 3


def io_thread_count() -> int:
    """Threads beside the caller's: one per further core this process may use, at least one."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS and Windows
        cores = os.cpu_count() or 2
    return max(1, min(MAX_IO_THREADS, cores - 1))


_IO: tuple[int, ThreadPoolExecutor] | None = None


def io_threads() -> ThreadPoolExecutor:
    """This process's I/O threads (a forked child, whose copy lacks them, makes its own).

    Their tasks only read or write files and widen floats, and never wait on each other or
    submit work here, so any number of streams and callers share them without deadlock.
    """
    global _IO
    if _IO is None or _IO[0] != os.getpid():
        _IO = (os.getpid(), ThreadPoolExecutor(io_thread_count(), thread_name_prefix="ee-io"))
    return _IO[1]


def in_parallel(
    fn: Callable[[int, int], object], lo: int, hi: int, *, align: int = 1, nbytes: int = 0
) -> None:
    """``fn(a, b)`` over consecutive parts of ``[lo, hi)`` at once: the first part on this
    thread, the others on the I/O threads; the cuts fall on multiples of ``align``.

    A range of fewer than ``PARALLEL_BYTES`` (``nbytes``) runs here in one call. ``fn`` must not
    wait on the I/O threads itself (it would hold one while waiting for another). An error in a
    part is raised once every part has stopped.
    """
    parts = io_thread_count() + 1 if nbytes >= PARALLEL_BYTES else 1
    inner = {(lo + (hi - lo) * i // parts) // align * align for i in range(1, parts)}
    cuts = [lo, *sorted(c for c in inner if lo < c < hi), hi]
    if len(cuts) == 2:
        fn(lo, hi)
        return
    others = [io_threads().submit(fn, a, b) for a, b in zip(cuts[1:-1], cuts[2:], strict=True)]
    try:
        fn(cuts[0], cuts[1])
    finally:
        wait(others)
    for future in others:
        future.result()
