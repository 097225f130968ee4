"""Greedy ensemble selection (Caruana et al., ICML 2004), with replacement and optional bagging.

Start from an empty ensemble; at each step add the input (possibly again) whose addition gives
the best fit-split metric for the mean of the chosen probabilities; after ``size`` steps keep the
best prefix. Selection counts are the weights. Picking an input twice is how the method weights
strong inputs; bagging (each bag a random half of the inputs) guards against overfitting a
small fit split by letting weaker-but-different inputs in.
"""

from __future__ import annotations

from collections.abc import Iterable
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

from .budget import (
    BUDGET_SCHEMA,
    EPSILON_COST,
    Budget,
    RowView,
    check_budget,
    cost_facts,
    fold_ids,
    make_budget,
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
    probs: np.ndarray | Cache | RowView,
    labels: np.ndarray,
    size: int,
    metric: str = "accuracy",
    candidates: np.ndarray | None = None,
    budget: Budget | None = None,
    strategy: str = "greedy",
    chosen: Iterable[int] = (),
) -> np.ndarray:
    """Selection counts [inputs] of one greedy run over ``probs`` [inputs, rows, classes].

    ``metric``: "accuracy" (ties broken by the lower NLL) or "nll". Remaining ties go to the
    earliest candidate; the kept prefix is the shortest with the best score. With a ``budget``
    only picks that keep the distinct members of the selection (and of ``chosen``, inputs that
    are in already) within its limit are candidates; a pick already made costs nothing again.
    ``strategy`` "gain_per_cost" picks the best metric gain over the ensemble so far (over the
    uniform prediction at the first step) per added cost, a free pick counting as gain /
    ``EPSILON_COST``; equal ratios go to the better score.
    """
    if metric not in ("accuracy", "nll"):
        raise GraphError(f"select: unknown metric {metric!r}; use 'accuracy' or 'nll'")
    candidates = np.arange(len(probs)) if candidates is None else np.asarray(candidates)
    total = np.zeros(probs.shape[1:], dtype=np.float32)
    picks: list[int] = []
    fixed = set(chosen)
    current = score(np.full(total.shape, 1 / total.shape[1], np.float32), 1, labels)
    best_prefix, best_prefix_score = 0, None
    for step in range(1, size + 1):
        best, best_score, best_ratio = -1, None, -np.inf
        taken = fixed | set(picks)
        for i in candidates:
            if budget is not None and not budget.fits(taken | {int(i)}):
                continue
            candidate = score(total, step, labels, probs[i])
            if strategy == "gain_per_cost" and budget is not None:
                gain = _gain(candidate, current, metric, len(labels))
                ratio = gain / max(budget.added(taken, int(i)), EPSILON_COST)
                tie = abs(ratio - best_ratio) <= 1e-12 * max(1.0, abs(ratio))
                if ratio > best_ratio and not tie or tie and better(candidate, best_score, metric):
                    best, best_score, best_ratio = int(i), candidate, ratio
            elif better(candidate, best_score, metric):
                best, best_score = int(i), candidate
        if best < 0:  # nothing fits the budget
            break
        total += probs[best]
        picks.append(best)
        current = best_score
        if better(best_score, best_prefix_score, metric):
            best_prefix, best_prefix_score = step, best_score
    return np.bincount(picks[:best_prefix], minlength=len(probs))


def _gain(new: tuple[int, float], old: tuple[int, float], metric: str, n: int) -> float:
    return (new[0] - old[0]) / n if metric == "accuracy" else old[1] - new[1]


def ensemble_selection(
    probs: np.ndarray | Cache | RowView,
    labels: np.ndarray,
    size: int,
    metric: str = "accuracy",
    bags: int = 0,
    seed: int = 0,
    budget: Budget | None = None,
    strategy: str = "greedy",
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Selection counts over ``candidates`` (default all inputs), or summed over ``bags`` seeded
    bags of half of them. Under a budget a bag is half of the candidates that fit it alone, and
    may add only what keeps the union of all bags' picks within it (the inputs earlier bags
    chose are in already, at no cost)."""
    if bags == 0:
        return greedy_selection(probs, labels, size, metric, candidates, budget, strategy)
    rng = np.random.default_rng(seed)
    m = len(probs)
    pool = np.arange(m) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if budget is not None:
        pool = np.array([i for i in pool if budget.fits([int(i)])], dtype=np.int64)
    counts = np.zeros(m, dtype=np.int64)
    if len(pool) == 0:
        return counts
    for _ in range(bags):
        if candidates is None and budget is None:
            bag = np.sort(rng.choice(m, size=max(1, m // 2), replace=False))
        else:
            bag = np.sort(rng.choice(pool, size=max(1, len(pool) // 2), replace=False))
        chosen = np.flatnonzero(counts)
        counts += greedy_selection(probs, labels, size, metric, bag, budget, strategy, chosen)
    return counts


def _probs(chunk: InputChunk) -> np.ndarray:
    return chunk.probs()


class Select(Combiner):
    """Greedy ensemble selection on the fit split; output the count-weighted mean of probs.

    Params: ``size`` steps (default 25), ``metric`` "accuracy" (ties by NLL) or "nll", ``bags``
    (0 = off), ``seed``, ``max_rows``: the selection runs on a seeded sample of that many fit
    rows (default 20000), cached as [inputs, rows, classes]. ``budget``: ``{gflops: X}`` or
    ``{images_per_s: Y}`` (see ``budget``): the chosen inputs' distinct members must stay
    within it; inputs of unknown cost are refused (listed in the state as ``refused``).
    ``strategy``: "greedy" (the best score that fits) or "gain_per_cost" (the best gain per
    added cost, in the budget's measure, GFLOPs without one). ``folds``: the fit split's own
    output is out of fold (each fold's rows from a selection made without them, stratified
    K-fold as in ``stacking``); default 5 under a budget, else 0 (in sample, optimistic).
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
            "budget": {**BUDGET_SCHEMA, "default": None, "type": ["object", "null"]},
            "strategy": {"enum": ["greedy", "gain_per_cost"], "default": "greedy"},
            "folds": {"type": ["integer", "null"], "minimum": 0, "default": None},
        },
    }
    needs_fit = True
    output_kind = "probs"
    scores_as_stored = True  # apply only feeds weighted_mean_probs, which reads float16 as it is

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__(params, classes)
        self.cache_limit = FLOAT32_CACHE_LIMIT
        self.fold_of: np.ndarray | None = None  # [fit rows] fold of each row, when out of fold
        self.fold_weights: list[dict[str, int]] = []

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_budget(params.get("budget"))
        if params.get("folds") == 1:
            raise GraphError("folds: 1 holds nothing out; use 0 (in sample) or 2 or more")
        return super().validate_params(params)

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        sources = role_inputs(inputs, "inputs", "select")
        check_classes(sources, self.classes, "select")
        p = self.params
        labels = check_labels(labels, len(self.classes), "select")
        budget, refused = make_budget(sources, p["budget"], p["strategy"])
        allowed = np.array([i for i, s in enumerate(sources) if s.id not in refused])
        rows = subsample_rows(len(labels), p["max_rows"], p["seed"])
        probs = gather_by_input(sources, rows, len(self.classes), _probs, self.cache_limit)
        run = (p["size"], p["metric"], p["bags"], p["seed"], budget, p["strategy"], allowed)
        counts = ensemble_selection(probs, labels[rows], *run)
        if counts.sum() == 0:
            raise GraphError(f"select: no input fits within budget {p['budget']}; raise it")
        ids = [s.id for s in sources]
        weights = {i: int(c) for i, c in zip(ids, counts, strict=True)}
        folds = p["folds"] if p["folds"] is not None else 5 if p["budget"] else 0
        state: dict[str, Any] = {"weights": weights, "rows_fitted": len(rows)}
        if folds:
            self.fold_of = fold_ids(labels, folds, p["seed"])
            held = self.fold_of[rows]
            for f in range(int(self.fold_of.max()) + 1):
                view = RowView(probs, np.flatnonzero(held != f))
                fold_counts = ensemble_selection(view, labels[rows][held != f], *run)
                fold_counts = fold_counts if fold_counts.sum() else counts
                self.fold_weights.append(dict(zip(ids, map(int, fold_counts), strict=True)))
            state["folds"] = len(self.fold_weights)
        state["chosen"] = {i: c for i, c in weights.items() if c > 0}
        state["cost"] = cost_facts(sources, np.flatnonzero(counts))
        if p["budget"] or p["strategy"] != "greedy":
            state.update(budget=p["budget"], strategy=p["strategy"], refused=refused)
        self.fitted_state = state

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "select")
        check_classes(chunks, self.classes, "select")
        fitted: dict[str, Any] | None = self.fitted_state.get("weights")
        if fitted is None:
            raise GraphError("select must be fitted on the graph's fit split before it applies")
        missing = [c.id for c in chunks if c.id not in fitted]
        if missing:
            raise GraphError(f"select: inputs {missing} were not part of the fit; refit")
        if on_fit_split and self.fold_of is not None:
            return Output("probs", scores=self._out_of_fold(chunks, rows))
        return Output("probs", scores=_mean(chunks, fitted))

    def _out_of_fold(self, chunks: list[InputChunk], rows: slice) -> np.ndarray:
        assert self.fold_of is not None
        if rows.stop > len(self.fold_of):
            raise GraphError(
                f"select: rows {rows.start}:{rows.stop} lie beyond the "
                f"{len(self.fold_of)} rows of the fit split"
            )
        fold_of = self.fold_of[rows]
        out = np.empty((len(fold_of), len(self.classes)), dtype=np.float32)
        for f in np.unique(fold_of):
            mask = fold_of == f
            part = [InputChunk(c.id, c.kind, c.classes, c.meta, c.scores[mask]) for c in chunks]
            out[mask] = _mean(part, self.fold_weights[f])
        return out


def _mean(chunks: list[InputChunk], weights: dict[str, int]) -> np.ndarray:
    chosen = [(c, weights[c.id]) for c in chunks if weights[c.id] > 0]
    return weighted_mean_probs([c for c, _ in chosen], [w for _, w in chosen])
