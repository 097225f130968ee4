"""The ``validated`` coverage policy: which corrections of which specialist to accept.

Candidates are the corrections ``base_gated`` makes: a row whose base label lies in the
specialist's subset and that the specialist gives another subset class ``c``. On labelled rows
each candidate is a fix (``c`` is the true class), a break (the base was right) or neither.
Per specialist and per covered class ``c`` the policy keeps the corrections into ``c`` whose
specialist probability reaches a threshold ``t`` (+inf: none), chosen to maximise
fixes − breaks of the *voted* result.

The fit, on labelled rows:

1. each (specialist, class) alone against the base: the threshold with the most net fixes,
   kept where that net is at least ``min_gain``;
2. coordinate ascent on the voted result's score ``hits − (min_gain − 1) × accepted``: each
   (specialist, class) in turn takes its best threshold given the others' (rows are
   independent given the others, so the sweep over a class's rows is exact); a move is made only
   where the score rises, so it stops;
3. if the voted result then scores fewer hits than the base, every correction is refused.

So decisions fitted on rows never score below the base on those rows (in sample). Out of sample
nothing can promise that: fitted on other rows, a decision can be wrong on these. ``fit_policy``
therefore also fits each fold's decisions without its rows (stratified folds as ``stacking``'s)
and labels the fold with them, the honest estimate of what the decisions do on rows they did not
see; and

4. if those out-of-fold labels score fewer hits than the base, covering is refused as a whole:
   every threshold is +inf on every split, and the fit split's output is the base's.

Step 4 is one choice made with the fit split's labels (cover or not), so the fit split's
accuracy is never below the base's, and is optimistic by at most that one choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble_engine import GraphError

from .coverage_rules import Specialist, cover, vote_keep_base
from .folds import folds_for_small_classes, stratified_folds

MAX_PASSES = 10


@dataclass
class Answers:
    """Every labelled row of the fit split: the base's label and each specialist's answer."""

    base: np.ndarray  # [n] store class
    answer: np.ndarray  # [n, G] store class, -1 for __other__
    confidence: np.ndarray  # [n, G]
    specs: list[Specialist]

    def take(self, rows: np.ndarray) -> Answers:
        return Answers(self.base[rows], self.answer[rows], self.confidence[rows], self.specs)


def covered_matrix(a: Answers, thresholds: np.ndarray, gated: bool = True) -> np.ndarray:
    """[n, G] each specialist's covered labels under ``thresholds`` [G, K]."""
    cols = [
        cover(a.base, a.answer[:, g], a.confidence[:, g], s, thresholds[g], gated)
        for g, s in enumerate(a.specs)
    ]
    return np.stack(cols, axis=1) if cols else np.zeros((len(a.base), 0), dtype=np.int64)


def best_threshold(gain: np.ndarray, confidence: np.ndarray, use_confidence: bool):
    """(threshold, net gain) of the best cut ``confidence >= t``; ties to the lowest ``t``."""
    if not use_confidence:
        return 0.0, int(gain.sum())
    order = np.argsort(-confidence, kind="stable")
    net, conf = np.cumsum(gain[order]), confidence[order]
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))  # last row of each value
    best = ends[np.flatnonzero(net[ends] == net[ends].max())[-1]]
    return float(conf[best]), int(net[best])


def candidates(a: Answers, g: int, c: int) -> np.ndarray:
    s = a.specs[g]
    return np.flatnonzero(s.subset[a.base] & (a.answer[:, g] == c) & (a.base != c))


def fit_thresholds(
    a: Answers, y: np.ndarray, min_gain: int, use_confidence: bool, n_classes: int
) -> np.ndarray:
    """Thresholds [G, K] (+inf: refused) fitted on rows with true labels ``y``."""
    g_count = len(a.specs)
    thr = np.full((g_count, n_classes), np.inf)
    pairs = [(g, int(c)) for g, s in enumerate(a.specs) for c in np.flatnonzero(s.subset)]
    rows = {p: candidates(a, *p) for p in pairs}
    pairs = [p for p in pairs if len(rows[p])]
    for g, c in pairs:  # 1. alone against the base
        r = rows[(g, c)]
        gain = (y[r] == c).astype(np.int64) - (a.base[r] == y[r])
        t, net = best_threshold(gain, a.confidence[r, g], use_confidence)
        if net >= min_gain:
            thr[g, c] = t
    penalty = min_gain - 1
    covered = covered_matrix(a, thr)
    for _ in range(MAX_PASSES):  # 2. coordinate ascent on the voted result
        moved = False
        for g, c in pairs:
            r = rows[(g, c)]
            others = covered[r]
            with_c, without = others.copy(), others.copy()
            with_c[:, g], without[:, g] = c, a.base[r]
            hit_with = vote_keep_base(with_c, a.base[r], n_classes)[0] == y[r]
            hit_without = vote_keep_base(without, a.base[r], n_classes)[0] == y[r]
            gain = hit_with.astype(np.int64) - hit_without
            conf = a.confidence[r, g]
            t, net = best_threshold(gain, conf, use_confidence)
            now = int(gain[conf >= thr[g, c]].sum()) - (penalty if np.isfinite(thr[g, c]) else 0)
            if max(net - penalty, 0) > now:  # the score rises by the difference
                thr[g, c] = t if net - penalty > 0 else np.inf
                covered[r, g] = np.where(conf >= thr[g, c], c, a.base[r])
                moved = True
        if not moved:
            break
    voted = vote_keep_base(covered, a.base, n_classes)[0]
    if (voted == y).sum() < (a.base == y).sum():  # 3. never below the base in sample
        thr[:] = np.inf
    return thr


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold [n] of each row: stratified by label, shuffled with ``seed`` (as ``stacking``); as
    many folds as the commonest class has rows where that is fewer."""
    folds = folds_for_small_classes(labels, folds)
    if folds < 2:
        raise GraphError(
            f"coverage: {len(labels)} fit rows cannot make 2 folds; fit on a larger labelled "
            "split or use policy: base_gated"
        )
    return stratified_folds(labels, folds, seed, "coverage")


@dataclass
class PolicyFit:
    """What the fit decided: thresholds on the whole split, and per fold for its OOF rows."""

    thresholds: np.ndarray  # [G, K] fitted on every row: used on the other splits
    fold_thresholds: list[np.ndarray]  # [G, K] per fold, fitted without that fold's rows
    folds: np.ndarray  # [n] fold of each fit row
    oof_covered: np.ndarray  # [n, G] out-of-fold covered labels
    oof_labels: np.ndarray  # [n] out-of-fold voted labels


def fit_policy(
    a: Answers, y: np.ndarray, *, min_gain: int, confidence: bool, folds: int, seed: int, k: int
) -> PolicyFit:
    full = fit_thresholds(a, y, min_gain, confidence, k)
    fold = fold_ids(y, folds, seed)
    folds = int(fold.max()) + 1  # fewer where the fit split's classes are small
    per_fold, oof = [], np.zeros_like(a.answer)
    for f in range(folds):
        train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        thr = fit_thresholds(a.take(train), y[train], min_gain, confidence, k)
        per_fold.append(thr)
        oof[held] = covered_matrix(a.take(held), thr)
    labels = vote_keep_base(oof, a.base, k)[0]
    if (labels == y).sum() < (a.base == y).sum():  # 4. covering at all is validated out of fold
        refused = np.full_like(full, np.inf)
        base = np.repeat(a.base[:, None], a.answer.shape[1], axis=1)
        return PolicyFit(refused, [refused.copy() for _ in per_fold], fold, base, a.base.copy())
    return PolicyFit(full, per_fold, fold, oof, labels)


def evidence(a: Answers, y: np.ndarray, fit: PolicyFit, classes: list[str]) -> dict:
    """Per specialist and covered class, on the fit split: the candidate corrections into the
    class with their fixes and breaks, the decision and its threshold, what the accepted ones
    fix and break (in sample), and how many of the folds' fits accepted the class."""
    out: dict[str, dict] = {}
    for g, s in enumerate(a.specs):
        per_class = {}
        for c in np.flatnonzero(s.subset):
            r = candidates(a, g, int(c))
            t = fit.thresholds[g, c]
            kept = r[a.confidence[r, g] >= t]
            per_class[classes[c]] = {
                "candidates": len(r),
                "fixes": int((y[r] == c).sum()),
                "breaks": int((a.base[r] == y[r]).sum()),
                "accept": bool(np.isfinite(t)),
                "threshold": float(t) if np.isfinite(t) else None,
                "kept_fixes": int((y[kept] == c).sum()),
                "kept_breaks": int((a.base[kept] == y[kept]).sum()),
                "folds_accepted": sum(bool(np.isfinite(ft[g, c])) for ft in fit.fold_thresholds),
            }
        out[s.id] = per_class
    return out
