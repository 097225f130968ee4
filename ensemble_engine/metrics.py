"""Accuracy and likelihood metrics, accumulated over row chunks so they stream.

Every metric follows the tie rule of ``ee export``, which ranks a row's classes with
``np.argsort(-scores, kind="stable")``: the highest score first, equal scores in class order.
``predicted_class`` is that ranking's first column and ``label_rank`` the label's position in
it, so top-1 counts a row as correct exactly when the exported label is the true one, and top-k
exactly when the true class is among the k classes exported. Everything that scores a
prediction (metrics, fusion fits, per-class accuracy, reports) uses these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def log_softmax(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def predicted_class(scores: np.ndarray) -> np.ndarray:
    """The class ``ee export`` writes for each row [n]: highest score, ties to the lowest index.

    ``argmax`` returns the first maximum, the first column of the stable descending sort.
    """
    return np.asarray(scores).argmax(axis=1)


def label_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position [n] of each row's label in ``ee export``'s ranking of its classes (0 = first).

    Classes scored strictly higher come first, then the classes of equal score in index order:
    the rank counts both kinds that precede the label. ``labels`` must be valid class indices.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    target = scores[np.arange(len(labels)), labels][:, None]
    before = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return (scores > target).sum(axis=1) + ((scores == target) & before).sum(axis=1)


@dataclass
class MetricAccumulator:
    """Top-1, top-5 and NLL over the rows whose label is known (label >= 0).

    ``kind`` is the prediction kind: for ``logits`` NLL uses log-softmax, for ``probs`` the log of
    the stored probability (clipped at 1e-12), and ``labels`` gives top-1 only. Blocks must be
    the values as stored (e.g. rounded to float16), the ones ``ee export`` ranks: rounding can
    make two scores equal, and then the tie rule (``label_rank``) decides.
    """

    kind: str
    n: int = 0
    top1: int = 0
    top5: int = 0
    nll: float = 0.0

    def update(self, block: np.ndarray, labels: np.ndarray) -> None:
        known = labels >= 0
        if not known.any():
            return
        y = labels[known].astype(np.int64)
        self.n += int(known.sum())
        if self.kind == "labels":
            self.top1 += int((np.asarray(block)[known] == y).sum())
            return
        scores = np.asarray(block, dtype=np.float32)[known]
        rows = np.arange(len(y))
        target = scores[rows, y]
        rank = label_rank(scores, y)
        self.top1 += int((rank < 1).sum())
        self.top5 += int((rank < 5).sum())
        if self.kind == "logits":
            logp = log_softmax(scores)[rows, y]
        else:
            logp = np.log(np.clip(target.astype(np.float64), 1e-12, None))
        self.nll -= float(logp.sum())

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        out = {"top1": self.top1 / self.n, "n": self.n}
        if self.kind != "labels":
            out["top5"] = self.top5 / self.n
            out["nll"] = self.nll / self.n
        return out


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Accuracy of each class over rows with a known label; NaN for classes with no rows."""
    known = labels >= 0
    y, p = labels[known], predicted[known]
    total = np.bincount(y, minlength=n_classes).astype(np.float64)
    correct = np.bincount(y[p == y], minlength=n_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / total, np.nan)
