"""Accuracy and likelihood metrics, accumulated over row chunks so they stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def log_softmax(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@dataclass
class MetricAccumulator:
    """Top-1, top-5 and NLL over the rows whose label is known (label >= 0).

    ``kind`` is the prediction kind: for ``logits`` NLL uses log-softmax, for ``probs`` the log of
    the stored probability (clipped at 1e-12), and ``labels`` gives top-1 only.
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
        # rank of the target = number of classes scored strictly higher
        rank = (scores > target[:, None]).sum(axis=1)
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
