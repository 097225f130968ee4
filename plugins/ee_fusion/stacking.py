"""Stacking: a meta-learner over the inputs' log-probabilities, honest on its own fit split.

A meta-learner fitted on the fit split looks better there than anywhere else. So the fit split
is cut into stratified, seeded folds; each fold's rows are predicted by a model fitted without
them, and those out-of-fold (OOF) probabilities are what ``apply(on_fit_split=True)`` returns.
Other splits get the model fitted on the whole (subsampled) fit split.

Both meta-learners are linear in the stacked log-probabilities, ``z = b + Σ_i W_i log p_i``, so
their logits are accumulated one input at a time and OOF rows are computed in one streamed pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.linear_model import LogisticRegression

from ensemble_engine import Combiner, GraphError, InputChunk, InputSource, Output, Role, softmax

from .cache import FLOAT32_CACHE_LIMIT, Cache, gather_by_row, subsample_rows
from .common import check_classes, check_labels, log_probs, role_inputs
from .folds import stratified_folds
from .pooling import fit_pooling, weights_and_temperature


class MetaModel(Protocol):
    bias: np.ndarray  # [K]

    def part(self, i: int, lp: np.ndarray) -> np.ndarray:
        """Input ``i``'s contribution [n, K] to the logits, from its log-probabilities."""
        ...


@dataclass
class PoolModel:
    """Log-linear pool ``Σ a_i log p_i`` (see ``pooling``)."""

    a: np.ndarray
    bias: np.ndarray

    def part(self, i: int, lp: np.ndarray) -> np.ndarray:
        return np.float32(self.a[i]) * lp


@dataclass
class LinearModel:
    """Multinomial logistic regression; ``coef`` [K, inputs, K], bias -inf for unseen classes."""

    coef: np.ndarray
    bias: np.ndarray

    def part(self, i: int, lp: np.ndarray) -> np.ndarray:
        return lp @ self.coef[:, i, :].T


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number [n] of each row: stratified by label, shuffled with ``seed``."""
    if len(labels) < folds:
        raise GraphError(f"stacking: {len(labels)} fit rows cannot make {folds} folds; lower folds")
    return stratified_folds(labels, folds, seed, "stacking")


def fit_pool_model(
    cache: Cache,
    y: np.ndarray,
    spans: list[tuple[int, int]] | None,
    init: PoolModel | None,
    n_classes: int,
) -> PoolModel:
    a = fit_pooling(cache, y, spans, init=None if init is None else init.a)
    return PoolModel(a, np.zeros(n_classes, dtype=np.float32))


def fit_logreg_model(
    cache: Cache, y: np.ndarray, spans: list[tuple[int, int]] | None, c: float, n_classes: int
) -> LinearModel:
    """scikit-learn's multinomial ``LogisticRegression`` on the stacked log-probabilities."""
    n, m, _ = cache.shape
    spans = [(0, n)] if spans is None else spans
    x = np.concatenate([cache.get(slice(lo, hi)) for lo, hi in spans]).reshape(-1, m * n_classes)
    yy = np.concatenate([y[lo:hi] for lo, hi in spans])
    coef = np.zeros((n_classes, m * n_classes), dtype=np.float32)
    bias = np.full(n_classes, -np.inf, dtype=np.float32)
    present = np.unique(yy)
    if len(present) == 1:
        bias[present] = 0.0
        return LinearModel(coef.reshape(n_classes, m, n_classes), bias)
    clf = LogisticRegression(C=c, max_iter=1000).fit(x, yy)
    w, b = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # binary: sigmoid(d) == softmax([0, d])
        w, b = np.vstack([np.zeros_like(w), w]), np.array([0.0, b[0]])
    coef[clf.classes_], bias[clf.classes_] = w, b
    return LinearModel(coef.reshape(n_classes, m, n_classes), bias)


def out_of_fold(
    sources: list[InputSource], models: list[MetaModel], folds: np.ndarray, n_classes: int
) -> np.ndarray:
    """Probabilities [n, K] where row r comes from ``models[folds[r]]``, streamed per input."""
    z = np.zeros((len(folds), n_classes), dtype=np.float32)
    for f, model in enumerate(models):
        z[folds == f] += model.bias
    for i, source in enumerate(sources):
        seen = 0
        for block, chunk in source.iter_chunks():
            lp, fold_of = log_probs(chunk), folds[block]
            view = z[block]
            for f in np.unique(fold_of):
                mask = fold_of == f
                view[mask] += models[f].part(i, lp[mask])
            seen += block.stop - block.start
        if seen != len(folds):
            raise GraphError(
                f"stacking: input {source.id!r} has {seen} rows, the fit split "
                f"{len(folds)}; its predictions do not cover the split"
            )
    return softmax(z)


class Stacking(Combiner):
    """A meta-learner fitted on the fit split, out-of-fold there (params ``folds``, ``seed``).

    ``meta: weights`` (default) learns one weight per input and a temperature T,
    ``softmax(Σ_i w_i log p_i / T)``, by L-BFGS-B on the NLL (see ``pooling`` for why the
    log-linear pool). It scales to 1000 classes × 66 inputs × 50k fit rows: the fit uses a seeded
    sample of ``max_rows`` rows (default 20000), cached as [rows, inputs, classes] (bfloat16
    beyond 512 MiB: 2.6 GB at that size; a few minutes on two CPU cores); the folds' fits
    warm-start from the full fit, which is safe because the objective is convex.
    ``meta: logreg`` is scikit-learn's multinomial ``LogisticRegression`` (param ``C``) on the
    stacked log-probabilities: inputs × classes features, so for small class counts.
    OOF probabilities [fit rows, classes] float32 are kept in memory to serve the fit split.
    """

    roles = (Role("inputs", kinds=("logits", "probs"), doc="predictions over the store's classes"),)
    params_schema = {
        "type": "object",
        "properties": {
            "meta": {"enum": ["weights", "logreg"], "default": "weights"},
            "folds": {"type": "integer", "minimum": 2, "default": 5},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
            "max_rows": {"type": "integer", "minimum": 10, "default": 20000},
            "C": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
        },
    }
    needs_fit = True
    output_kind = "probs"

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__(params, classes)
        self.model: MetaModel | None = None
        self.oof: np.ndarray | None = None
        self.input_ids: list[str] = []
        self.cache_limit = FLOAT32_CACHE_LIMIT

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        sources = role_inputs(inputs, "inputs", "stacking")
        check_classes(sources, self.classes, "stacking")
        n_classes, p = len(self.classes), self.params
        labels = check_labels(labels, n_classes, "stacking")
        folds = fold_ids(labels, p["folds"], p["seed"])
        rows = subsample_rows(len(labels), p["max_rows"], p["seed"])
        # cached rows sorted by fold: each fold's training rows are the two spans around it
        order = np.argsort(folds[rows], kind="stable")
        cache = gather_by_row(sources, rows, n_classes, log_probs, order, self.cache_limit)
        y = labels[rows][order]
        ends = np.searchsorted(folds[rows][order], np.arange(p["folds"] + 1))
        train = [[(0, ends[f]), (ends[f + 1], len(rows))] for f in range(p["folds"])]
        if p["meta"] == "weights":
            full: MetaModel = fit_pool_model(cache, y, None, None, n_classes)
            fold_models: list[MetaModel] = [
                fit_pool_model(cache, y, spans, full, n_classes) for spans in train
            ]
        else:
            full = fit_logreg_model(cache, y, None, p["C"], n_classes)
            fold_models = [fit_logreg_model(cache, y, spans, p["C"], n_classes) for spans in train]
        del cache
        self.model, self.input_ids = full, [s.id for s in sources]
        self.oof = out_of_fold(sources, fold_models, folds, n_classes)
        self.fitted_state = {
            "meta": p["meta"],
            "folds": p["folds"],
            "rows_fitted": len(rows),
            **self._facts(full),
        }

    def _facts(self, model: MetaModel) -> dict[str, Any]:
        if isinstance(model, PoolModel):
            weights, temperature = weights_and_temperature(model.a)
            return {
                "weights": dict(zip(self.input_ids, map(float, weights), strict=True)),
                "temperature": temperature,
            }
        mass = np.abs(model.coef).sum(axis=(0, 2))
        share = mass / mass.sum() if mass.sum() > 0 else mass
        return {
            "C": self.params["C"],
            "input_share": dict(zip(self.input_ids, map(float, share), strict=True)),
        }

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "stacking")
        check_classes(chunks, self.classes, "stacking")
        if self.model is None or self.oof is None:
            raise GraphError("stacking must be fitted on the graph's fit split before it applies")
        if on_fit_split:
            if rows.stop > len(self.oof):
                raise GraphError(
                    f"stacking: rows {rows.start}:{rows.stop} lie beyond the "
                    f"{len(self.oof)} rows of the fit split"
                )
            return Output("probs", scores=self.oof[rows].copy())
        by_id = {c.id: c for c in chunks}
        missing = [i for i in self.input_ids if i not in by_id]
        if missing:
            raise GraphError(f"stacking: inputs {missing} of the fit are missing here; refit")
        z = np.broadcast_to(self.model.bias, (len(chunks[0]), len(self.classes))).copy()
        for i, input_id in enumerate(self.input_ids):
            z += self.model.part(i, log_probs(by_id[input_id]))
        return Output("probs", scores=softmax(z))
