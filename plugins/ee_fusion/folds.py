"""Stratified, seeded folds of a fit split: what stacking, select and coverage cut out of fold.

Each combiner keeps its own rule for how many folds a small fit split gets (stacking refuses
fewer rows than folds; select and coverage take as many folds as the commonest class has rows)
and its own fix in the message; the cut itself is this one.
"""

from __future__ import annotations

import warnings

import numpy as np

from ensemble_engine import GraphError


def stratified_folds(labels: np.ndarray, folds: int, seed: int, combiner: str) -> np.ndarray:
    """Fold number [n] of each row: stratified by label, shuffled with ``seed``.

    Classes rarer than ``folds`` are spread as evenly as they can be (scikit-learn's warning
    about them is silenced: on a validation split with many classes it is the normal case).
    """
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            for f, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
                out[held] = f
        except ValueError as exc:
            problem = f"{combiner}: cannot make {folds} folds ({exc}); lower folds"
            raise GraphError(problem) from None
    return out


def folds_for_small_classes(labels: np.ndarray, folds: int) -> int:
    """``folds``, or fewer where the commonest class has fewer rows (scikit-learn refuses more):
    a small held-out split still gets folds instead of failing a graph that runs on more data."""
    return min(folds, int(np.bincount(labels).max()) if len(labels) else 0)
