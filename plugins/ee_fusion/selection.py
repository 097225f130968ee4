"""Greedy ensemble selection (Caruana et al., ICML 2004), with replacement and optional bagging.

Start from an empty ensemble; at each step add the input (possibly again) whose addition gives
the best fit-split metric for the mean of the chosen probabilities; after ``size`` steps keep the
best prefix. Selection counts are the weights. Picking an input twice is how the method weights
strong inputs; bagging (each bag a random half of the inputs) guards against overfitting a
small fit split by letting weaker-but-different inputs in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_engine import (
    Combiner,
    GraphError,
    InputChunk,
    InputSource,
    Output,
    Role,
    predicted_class,
)

from .cache import FLOAT32_CACHE_LIMIT, Cache, gather_by_input, subsample_rows
from .common import check_classes, check_labels, role_inputs
from .mean_probs import weighted_mean_probs

#: Probabilities are floored here before the log of the NLL.
NLL_FLOOR = 1e-7

#: Mean NLLs closer than this count as equal (float32 sums in another order differ by less).
NLL_TOLERANCE = 1e-6

#: Elements of [rows, classes] scored at once (1 MiB of float32: stays in CPU cache).
BLOCK_ELEMENTS = 1 << 18


def score(
    total: np.ndarray, count: int, labels: np.ndarray, extra: np.ndarray | None = None
) -> tuple[int, float]:
    """(correct rows, mean NLL) of the mean prediction ``(total + extra) / count``.

    Computed in row blocks of ``BLOCK_ELEMENTS`` so the sum is never materialised whole; a row
    is correct under ``ee export``'s tie rule (``predicted_class``).
    """
    n, k = total.shape
    block = max(1, BLOCK_ELEMENTS // k)
    hits, nll = 0, 0.0
    for lo in range(0, n, block):
        part = total[lo : lo + block]
        if extra is not None:
            part = part + extra[lo : lo + block]
        y = labels[lo : lo + block]
        hits += int((predicted_class(part) == y).sum())
        p_true = part[np.arange(len(y)), y] / count
        nll -= float(np.log(np.maximum(p_true, NLL_FLOOR)).sum(dtype=np.float64))
    return hits, nll / n


def better(new: tuple[int, float], old: tuple[int, float] | None, metric: str) -> bool:
    """Whether score ``new`` beats ``old``; NLLs within ``NLL_TOLERANCE`` are equal.

    The tolerance matters: the same multiset of picks reached in another order (or an input
    picked twice as often as another one) gives the same mean up to rounding, and must tie.
    """
    if old is None:
        return True
    if metric == "accuracy" and new[0] != old[0]:
        return new[0] > old[0]
    return new[1] < old[1] - NLL_TOLERANCE


def greedy_selection(
    probs: np.ndarray | Cache,
    labels: np.ndarray,
    size: int,
    metric: str = "accuracy",
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Selection counts [inputs] of one greedy run over ``probs`` [inputs, rows, classes].

    ``metric``: "accuracy" (ties broken by the lower NLL) or "nll". Remaining ties go to the
    earliest candidate; the kept prefix is the shortest with the best score.
    """
    if metric not in ("accuracy", "nll"):
        raise GraphError(f"select: unknown metric {metric!r}; use 'accuracy' or 'nll'")
    candidates = np.arange(len(probs)) if candidates is None else np.asarray(candidates)
    total = np.zeros(probs.shape[1:], dtype=np.float32)
    picks: list[int] = []
    best_prefix, best_prefix_score = 0, None
    for step in range(1, size + 1):
        best, best_score = -1, None
        for i in candidates:
            candidate = score(total, step, labels, probs[i])
            if better(candidate, best_score, metric):
                best, best_score = int(i), candidate
        total += probs[best]
        picks.append(best)
        if better(best_score, best_prefix_score, metric):
            best_prefix, best_prefix_score = step, best_score
    return np.bincount(picks[:best_prefix], minlength=len(probs))


def ensemble_selection(
    probs: np.ndarray | Cache,
    labels: np.ndarray,
    size: int,
    metric: str = "accuracy",
    bags: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Selection counts over all inputs, or summed over ``bags`` seeded bags of half of them."""
    if bags == 0:
        return greedy_selection(probs, labels, size, metric)
    rng = np.random.default_rng(seed)
    m = len(probs)
    counts = np.zeros(m, dtype=np.int64)
    for _ in range(bags):
        bag = np.sort(rng.choice(m, size=max(1, m // 2), replace=False))
        counts += greedy_selection(probs, labels, size, metric, candidates=bag)
    return counts


def _probs(chunk: InputChunk) -> np.ndarray:
    return chunk.probs()


class Select(Combiner):
    """Greedy ensemble selection on the fit split; output the count-weighted mean of probs.

    Params: ``size`` steps (default 25), ``metric`` "accuracy" (ties by NLL) or "nll", ``bags``
    (0 = off), ``seed``, ``max_rows``: the selection runs on a seeded sample of that many fit
    rows (default 20000), cached as [inputs, rows, classes]. The fit split's own output is in
    sample: its metrics are optimistic, as for any choice made on that split.
    """

    roles = (Role("inputs", kinds=("logits", "probs"), doc="candidate predictions"),)
    params_schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 1, "default": 25},
            "metric": {"enum": ["accuracy", "nll"], "default": "accuracy"},
            "bags": {"type": "integer", "minimum": 0, "default": 0},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
            "max_rows": {"type": "integer", "minimum": 10, "default": 20000},
        },
    }
    needs_fit = True
    output_kind = "probs"
    scores_as_stored = True  # apply only feeds weighted_mean_probs, which reads float16 as it is

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__(params, classes)
        self.cache_limit = FLOAT32_CACHE_LIMIT

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        sources = role_inputs(inputs, "inputs", "select")
        check_classes(sources, self.classes, "select")
        p = self.params
        labels = check_labels(labels, len(self.classes), "select")
        rows = subsample_rows(len(labels), p["max_rows"], p["seed"])
        probs = gather_by_input(sources, rows, len(self.classes), _probs, self.cache_limit)
        counts = ensemble_selection(
            probs, labels[rows], p["size"], p["metric"], p["bags"], p["seed"]
        )
        self.fitted_state = {
            "weights": {s.id: int(c) for s, c in zip(sources, counts, strict=True)},
            "rows_fitted": len(rows),
        }

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "select")
        check_classes(chunks, self.classes, "select")
        fitted: dict[str, Any] | None = self.fitted_state.get("weights")
        if fitted is None:
            raise GraphError("select must be fitted on the graph's fit split before it applies")
        missing = [c.id for c in chunks if c.id not in fitted]
        if missing:
            raise GraphError(f"select: inputs {missing} were not part of the fit; refit")
        chosen = [(c, fitted[c.id]) for c in chunks if fitted[c.id] > 0]
        scores = weighted_mean_probs([c for c, _ in chosen], [w for _, w in chosen])
        return Output("probs", scores=scores)
