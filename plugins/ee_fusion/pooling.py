"""Log-linear pooling: ``softmax(Σ_i a_i log p_i)`` with a_i ≥ 0, fitted by minimum NLL.

Writing ``a_i = w_i / T`` with ``Σ w_i = 1`` reads the model as a weighted geometric mean of the
inputs divided by a temperature T (as in temperature scaling: T < 1 sharpens), so one fit learns
both the weights and the calibration.
It is preferred over the linear pool ``Σ w_i p_i`` because

* the NLL is convex in ``a`` (a log-sum-exp of a linear map minus a linear map): one optimum,
  found by L-BFGS-B with plain ``a ≥ 0`` bounds, no softmax reparameterisation, and a warm
  start from another fit cannot leak into the answer;
* the temperature comes for free, while a linear pool is stuck with the spread of its inputs.

Its cost is that the fit needs every class score of every input ([rows, inputs, classes]),
hence the row subsampling in ``stacking``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from .cache import Cache

#: Elements of [rows, inputs, classes] handled at once (1 MiB of float32: stays in CPU cache).
BLOCK_ELEMENTS = 1 << 18

#: Upper bound of each a_i: keeps the fit finite when the fit split is separable.
A_MAX = 100.0


def _spans(cache: Cache, spans: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    return [(0, len(cache))] if spans is None else [(int(a), int(b)) for a, b in spans]


def label_log_probs(cache: Cache, labels: np.ndarray) -> np.ndarray:
    """[rows, inputs]: the log-probability each input gives each row's label."""
    return cache.get((np.arange(len(cache)), slice(None), labels)).astype(np.float64)


def nll_and_grad(
    a: np.ndarray,
    cache: Cache,
    label_lp: np.ndarray,
    spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[float, np.ndarray]:
    """Mean NLL of the pooled prediction over the row ``spans`` and its gradient in ``a``.

    ``cache``: log-probabilities [rows, inputs, classes]; ``label_lp``: [rows, inputs] from
    ``label_log_probs``. With ``z = Σ a_i L_i`` and ``q = softmax(z)``:
    ``nll = mean(logsumexp(z) - z_y)`` and ``∂nll/∂a_i = mean(Σ_k q_k L_ik - L_iy)``.
    Row blocks stay small (``BLOCK_ELEMENTS``) so each is read once from memory and reused
    from the CPU cache for the gradient; sums are float64 so the line search sees a smooth
    objective.
    """
    _, m, k = cache.shape
    a32 = np.asarray(a, dtype=np.float32)
    block = max(1, BLOCK_ELEMENTS // (m * k))
    buffer = np.empty((block, m, k), dtype=np.float32) if cache.compact else None
    total, grad, count = 0.0, np.zeros(m, dtype=np.float64), 0
    for lo, hi in _spans(cache, spans):
        for start in range(lo, hi, block):
            lp = cache.get(slice(start, min(start + block, hi)), buffer)  # [b, m, K]
            z = np.matmul(a32, lp)  # [b, K]
            top = z.max(axis=1, keepdims=True)
            z -= top
            np.exp(z, out=z)
            norm = z.sum(axis=1, keepdims=True)
            z /= norm
            total += float((np.log(norm, dtype=np.float64) + top).sum())
            grad += np.matmul(lp, z[:, :, None]).sum(axis=(0, 2), dtype=np.float64)
        part = label_lp[lo:hi]
        total -= float((part @ np.asarray(a, dtype=np.float64)).sum())
        grad -= part.sum(axis=0)
        count += hi - lo
    return total / count, grad / count


def fit_pooling(
    cache: Cache,
    labels: np.ndarray,
    spans: Sequence[tuple[int, int]] | None = None,
    init: np.ndarray | None = None,
    max_iter: int = 200,
) -> np.ndarray:
    """The ``a`` ≥ 0 minimising the pooled NLL on the row ``spans`` of ``cache`` (default: all).

    Starts from the plain geometric mean (``a_i = 1/m``) unless ``init`` is given. ``ftol``
    1e-7 stops once the NLL moves by less than a ten-millionth: far below what matters.
    """
    m = cache.shape[1]
    a0 = np.full(m, 1.0 / m) if init is None else np.clip(init, 0.0, A_MAX)
    result = minimize(
        nll_and_grad,
        a0,
        args=(cache, label_log_probs(cache, labels), spans),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, A_MAX)] * m,
        options={"maxiter": max_iter, "ftol": 1e-7},
    )
    return np.asarray(result.x, dtype=np.float64)


def weights_and_temperature(a: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Split ``a`` into weights ``w`` summing to 1 and the temperature ``T = 1 / Σ a_i``.

    All-zero ``a`` (every input useless) is the uniform prediction: uniform weights, T None.
    """
    total = float(a.sum())
    if total <= 0:
        return np.full(len(a), 1.0 / len(a)), None
    return a / total, 1.0 / total
