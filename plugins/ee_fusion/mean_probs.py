"""The weighted mean of probabilities, the inner loop of soft voting, at the speed of the maths.

A soft vote over 66 inputs of 1000 classes spends nearly all of its time here, so the loop is
written for the machine. The rows are cut into pieces of a fixed size; for each piece, input
after input, two torch kernels run: a fused softmax into a scratch buffer (float16 widened on the
way), then a fused ``acc += w * p``. The piece's accumulator and scratch stay in L2 cache for
all the inputs. numpy needs six passes and a temporary per input for the same sum, about 2.5x
slower, and widens float16 several times slower than torch.

Pieces run on a small pool of Python threads, as many as torch's thread setting, and each
kernel on one thread: torch releases the GIL inside its kernels, and independent pieces need
no barrier, so a core that another process keeps busy only slows its own pieces. (torch's own
intra-op threads on blocks this small spin at a barrier per kernel, several times slower on a
loaded machine.) torch is imported on first use, so listing or reading a store never loads it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ensemble_engine import GraphError, InputChunk

if TYPE_CHECKING:
    import torch

#: Bytes of float32 rows per piece: the piece's accumulator, its scratch and the input's rows
#: stay in a core's L2 cache (2 MB on current server cores) while every input is added.
PIECE_BYTES = 512 * 1024


def weighted_mean_probs(chunks: Iterable[InputChunk], weights: Sequence[float]) -> np.ndarray:
    """``Σ w_i p_i / Σ w_i`` [n, K] float32, where ``p_i`` is softmax of logits, probs as stored.

    Inputs with weight 0 are skipped (never read or converted). Each term is added as
    ``acc += (w_i / Σ w) * p_i`` in float32, inputs in order, each row on its own: a row's
    result depends neither on the number of threads nor on where its row block was cut, so
    ``execute(workers=K)`` writes the same bits as one process. The weights are scaled by a
    power of two first (``weight_fractions``), so that huge weights cannot overflow the sum.
    """
    fractions = weight_fractions(weights)
    terms = [(c, f) for c, w, f in zip(chunks, weights, fractions, strict=True) if w != 0]
    import torch

    shape = _scores_shape(terms[0][0])
    for chunk, _ in terms:
        if _scores_shape(chunk) != shape:
            raise GraphError(
                f"input {chunk.id!r} has scores of shape {list(_scores_shape(chunk))} where "
                f"the first input has {list(shape)}; every input must give the same rows"
            )
    out = np.zeros(shape, dtype=np.float32)
    rows = max(1, PIECE_BYTES // (4 * max(1, shape[1])))
    pieces = [(a, min(shape[0], a + rows)) for a in range(0, shape[0], rows)]
    inputs = [(_tensor(c), c.kind == "logits", scale) for c, scale in terms]
    acc = torch.from_numpy(out)
    threads = torch.get_num_threads()
    with _one_thread():
        if threads <= 1 or len(pieces) == 1:
            for piece in pieces:
                _add_piece(acc, inputs, piece)
        else:
            pool = _pool(threads)
            for done in [pool.submit(_add_piece, acc, inputs, p) for p in pieces]:
                done.result()
    return out


def weight_fractions(weights: Sequence[float]) -> list[float]:
    """``w_i / Σ w`` for finite non-negative weights with a positive sum, overflow-free.

    The weights are first multiplied by the power of two that brings the largest near 1: that
    is exact, and it changes neither the sum's rounding nor the quotients, so ordinary weights
    give the same bits as the plain ``w_i / Σ w``, while 1e308 + 1e308 no longer sums to inf
    (which made every fraction 0 and the output all zeros).
    """
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or w.min(initial=0.0) < 0:
        raise GraphError(f"weights {w.tolist()} must be finite and non-negative numbers")
    if w.max(initial=0.0) <= 0:
        raise GraphError("every input has weight 0; give at least one input a positive weight")
    scaled = np.ldexp(w, -int(np.frexp(w.max())[1]))
    total = float(np.sum(scaled))
    return [float(x) / total for x in scaled]


def _add_piece(
    acc: torch.Tensor, inputs: list[tuple[torch.Tensor, bool, float]], piece: tuple[int, int]
) -> None:
    """``acc[a:b] += scale * p`` for every input in order, through one scratch buffer."""
    import torch

    a, b = piece
    target = acc[a:b]
    scratch = torch.empty_like(target)
    for x, logits, scale in inputs:
        if logits:  # float16 is widened (exactly) inside the kernel
            p = torch.softmax(x[a:b], 1, dtype=torch.float32, out=scratch)
        elif x.dtype == torch.float32:
            p = x[a:b]
        else:  # widened first, so the sum is the float32 one whatever the stored dtype
            p = scratch.copy_(x[a:b])
        target.add_(p, alpha=scale)


def _scores_shape(chunk: InputChunk) -> tuple[int, int]:
    if chunk.scores is None:
        raise GraphError(
            f"input {chunk.id!r} holds labels, which cannot be turned into probabilities"
        )
    scores = np.asarray(chunk.scores)
    if scores.ndim != 2:
        raise GraphError(f"input {chunk.id!r} has scores of shape {list(scores.shape)}, not [n, K]")
    return int(scores.shape[0]), int(scores.shape[1])


def _tensor(chunk: InputChunk) -> torch.Tensor:
    """The chunk's scores as a tensor sharing their memory (copied only where torch cannot
    share numpy's layout or dtype: reversed strides, non-native byte order, integers)."""
    import torch

    if chunk.kind not in ("logits", "probs"):
        return torch.from_numpy(chunk.probs())  # the contract's conversion (or its error)
    scores = np.asarray(chunk.scores)
    if scores.dtype not in (np.float16, np.float32, np.float64) or not scores.flags.c_contiguous:
        scores = np.ascontiguousarray(scores, dtype=np.float32)
    if scores.flags.writeable:
        return torch.from_numpy(scores)
    with warnings.catch_warnings():  # torch warns that it could write; it only reads here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(scores)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's piece threads (a forked child, whose copy lacks them, makes its own)."""
    global _POOL
    if _POOL is None or _POOL[:2] != (os.getpid(), threads):
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="ee-probs"))
    return _POOL[2]


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one while the pieces run, and restored after.

    A pool thread takes the setting in force at its first kernel and keeps it.
    """
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
