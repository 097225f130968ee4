"""The numbers a report shows, gathered from a store.

Top-1 values come from the ``metrics`` attrs the writer stores with every prediction, so most of
the report reads attrs only. Rows are read only for error agreement and per-class accuracy, and
then streamed chunk by chunk, keeping one predicted label per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ensemble_engine import (
    OTHER,
    Prediction,
    PredictionStore,
    StoreError,
    per_class_accuracy,
    predicted_class,
)

PREFERRED_SPLITS = ("val", "test")


def source_type(pred: Prediction) -> str:
    """``producer``, ``combiner`` or ``import`` (``?`` when a writer left it out)."""
    return str(pred.source.get("type", "?"))


def is_subset(store: PredictionStore, pred: Prediction) -> bool:
    """A class-subset prediction (a specialist): its top-1 is over its own classes."""
    return store.classes_of(pred) != store.classes


def group_of(pred: Prediction) -> str:
    """The backbone-loss pair a producer belongs to; its name when it records neither."""
    parts = [str(pred.attrs[k]) for k in ("backbone", "loss") if pred.attrs.get(k) is not None]
    return "-".join(parts) or pred.name


def top1_of(pred: Prediction | None) -> float | None:
    return None if pred is None else pred.metric("top1")


@dataclass
class ReportData:
    """Everything complete in a store, and the labelled splits the accuracy sections use."""

    store: PredictionStore
    splits: list[str]  # labelled splits the report scores, the first being the primary one
    preds: list[Prediction]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def primary(self) -> str | None:
        return self.splits[0] if self.splits else None

    @property
    def class_labels(self) -> list[str]:
        return self.store.class_names or self.store.classes

    def get(self, name: str, split: str) -> Prediction | None:
        return next((p for p in self.preds if p.name == name and p.split == split), None)

    def on(self, split: str | None) -> list[Prediction]:
        return [p for p in self.preds if p.split == split]

    def producers(self, split: str | None = None) -> list[Prediction]:
        """Producer predictions over the store's full class space (specialists left out)."""
        return [
            p
            for p in self.preds
            if source_type(p) == "producer"
            and not is_subset(self.store, p)
            and (split is None or p.split == split)
        ]

    def combiners(self, split: str | None = None) -> list[Prediction]:
        return [
            p
            for p in self.preds
            if source_type(p) == "combiner" and (split is None or p.split == split)
        ]

    def lineage_split(self) -> str | None:
        """The split whose node scores the fusion graph shows: the primary one, else any."""
        splits = [p.split for p in self.combiners()]
        if self.primary in splits:
            return self.primary
        return ordered_splits(set(splits))[0] if splits else None

    def gain(self, node: Prediction) -> float | None:
        """Top-1 of a node minus the best top-1 among its full-class-space inputs."""
        top1 = top1_of(node)
        inputs = [self.get(str(name), node.split) for name in node.attrs.get("inputs") or []]
        best = [top1_of(p) for p in inputs if p is not None and not is_subset(self.store, p)]
        best = [b for b in best if b is not None]
        return None if top1 is None or not best else top1 - max(best)


def ordered_splits(splits: set[str]) -> list[str]:
    """``val``, then ``test``, then the others by name: the order a reader expects."""
    return [s for s in PREFERRED_SPLITS if s in splits] + sorted(splits - set(PREFERRED_SPLITS))


def gather(store: PredictionStore, splits: Sequence[str] | None = None) -> ReportData:
    """Read every complete prediction's attrs and pick the labelled splits to score.

    By default: the labelled splits holding predictions, ``val`` then ``test`` then the rest.
    A split named explicitly must exist and carry labels, since the report scores it.
    """
    preds = store.list()
    labels: dict[str, np.ndarray] = {}
    if splits:
        chosen = list(dict.fromkeys(splits))
        for name in chosen:
            labels[name] = store.split(name).labels
            if not (labels[name] >= 0).any():
                raise StoreError(
                    f"split {name!r} of {store.path} has no labels, so nothing on it can be "
                    "scored; choose a labelled split with --split"
                )
    else:
        chosen = []
        for name in ordered_splits({p.split for p in preds}):
            lab = store.split(name).labels
            if (lab >= 0).any():
                chosen.append(name)
                labels[name] = lab
    return ReportData(store, chosen, preds, labels)


def producer_top1(data: ReportData) -> dict[str, dict[tuple[str, str], list[float]]]:
    """split → (backbone-loss, test size) → the top-1 of every producer with those facts."""
    out: dict[str, dict[tuple[str, str], list[float]]] = {}
    for split in data.splits:
        cells: dict[tuple[str, str], list[float]] = defaultdict(list)
        for pred in data.producers(split):
            score = top1_of(pred)
            if score is not None:
                cells[(group_of(pred), str(pred.attrs.get("test_size", "–")))].append(score)
        if cells:
            out[split] = dict(cells)
    return out


def predicted_labels(store: PredictionStore, pred: Prediction) -> np.ndarray:
    """The class index ``ee export`` writes for every row, streamed (see ``predicted_class``)."""
    parts = []
    for _, block in store.iter_rows(pred.name, pred.split):
        parts.append(block if pred.kind == "labels" else predicted_class(block))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


@dataclass
class Agreement:
    """Correlation of the 0/1 error indicators of producers on one labelled split."""

    split: str
    names: list[str]
    matrix: np.ndarray  # [P, P]; NaN where a producer makes no error (or only errors)
    total: int  # producers on the split before the cap


def error_agreement(data: ReportData, cap: int = 40) -> Agreement | None:
    """Pearson correlation of producers' errors (the phi coefficient) on the primary split.

    High correlation means two models fail on the same images, so fusing them gains little.
    Past ``cap`` producers only the best by top-1 are kept, to stay legible.
    """
    split = data.primary
    if split is None:
        return None
    preds = data.producers(split)
    if len(preds) < 2:
        return None
    total = len(preds)
    preds = sorted(preds, key=lambda p: (-(top1_of(p) or 0.0), p.name))[:cap]
    preds = sorted(preds, key=lambda p: p.name)
    y = data.labels[split]
    known = y >= 0
    errors = np.stack([(predicted_labels(data.store, p)[known] != y[known]) for p in preds]).astype(
        np.float64
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.corrcoef(errors)
    return Agreement(split, [p.name for p in preds], np.atleast_2d(matrix), total)


@dataclass
class CoverageView:
    """Per-class accuracy of a coverage node's base input and of its output."""

    node: str
    base: str
    split: str
    specialists: dict[str, list[int]]  # name → store class indices it covers
    count: np.ndarray  # labelled rows per class
    before: np.ndarray  # per-class accuracy of the base (NaN: class absent)
    after: np.ndarray

    def rows(self, limit: int = 30, weakest: int = 10) -> list[int]:
        """Classes worth a look: those specialists cover or whose accuracy changed, and the
        weakest of the base, ordered by base accuracy (at most ``limit``)."""
        covered = {i for idx in self.specialists.values() for i in idx}
        changed = set(np.flatnonzero(~np.isclose(self.before, self.after, equal_nan=True)))
        present = np.flatnonzero(self.count > 0)
        weak = present[np.argsort(self.before[present], kind="stable")][:weakest]
        picked = sorted(
            covered | changed | {int(i) for i in weak},
            key=lambda i: (np.nan_to_num(self.before[i], nan=2.0), i),
        )
        return [int(i) for i in picked[:limit]]


def coverage_view(data: ReportData) -> tuple[CoverageView | None, list[str]]:
    """The deepest coverage node on the primary split with its base; also every coverage node."""
    split = data.primary
    nodes = [p for p in data.combiners(split) if p.attrs.get("combiner") == "coverage"]
    if split is None or not nodes:
        return None, [p.name for p in nodes]
    node = nodes[-1]
    for candidate in nodes:  # prefer a node that feeds no other coverage node
        if not any(candidate.name in (n.attrs.get("inputs") or []) for n in nodes):
            node = candidate
    roles = node.attrs.get("roles") or {}
    inputs = [str(i) for i in node.attrs.get("inputs") or []]
    base_name = (roles.get("base") or inputs[:1] or [None])[0]
    base = None if base_name is None else data.get(str(base_name), split)
    if base is None or is_subset(data.store, base):
        return None, [p.name for p in nodes]
    spec_names = roles.get("specialists") or [i for i in inputs if i != base_name]
    index = {c: i for i, c in enumerate(data.store.classes)}
    specialists = {}
    for name in spec_names:
        spec = data.get(str(name), split)
        if spec is not None:
            classes = data.store.classes_of(spec)
            specialists[str(name)] = [index[c] for c in classes if c != OTHER and c in index]
    y = data.labels[split]
    k = len(data.store.classes)
    return (
        CoverageView(
            node.name,
            base.name,
            split,
            specialists,
            np.bincount(y[y >= 0], minlength=k),
            per_class_accuracy(predicted_labels(data.store, base), y, k),
            per_class_accuracy(predicted_labels(data.store, node), y, k),
        ),
        [p.name for p in nodes],
    )
