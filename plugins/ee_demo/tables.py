"""The demo's results, read back from the store, as the seed's tables and one summary line.

Everything here reads the store only (metrics attrs and labels), so the numbers printed are the
numbers `ee ls` and `ee report` show for the same store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from ensemble_engine import NodeResult, PredictionStore, per_class_accuracy, predicted_class

SPLITS = ("val", "test")


@dataclass
class ProducerScores:
    """One trained model: top-1 per split and test size (fractions)."""

    name: str  # the prediction name without its -s<size> suffix
    backbone: str
    loss: str
    top1: dict[tuple[str, int], float] = field(default_factory=dict)  # (split, size) → top-1

    def best(self, split: str) -> float:
        values = [v for (s, _), v in self.top1.items() if s == split]
        return max(values) if values else float("nan")


@dataclass
class Summary:
    """The headline: the best single model, the fused (stage-2) and the covered (final) top-1."""

    best_single: str
    best_single_test: float
    fused_test: float
    covered_test: float

    @property
    def error_ratio(self) -> float:
        """Final test error over the best single prediction's test error."""
        best_error = 1.0 - self.best_single_test
        return (1.0 - self.covered_test) / best_error if best_error > 0 else float("nan")

    def line(self) -> str:
        return (
            f"test top-1: best single {self.best_single_test:.2%} ({self.best_single}) → fused "
            f"{self.fused_test:.2%} → covered {self.covered_test:.2%}; "
            f"error ratio final/best single {self.error_ratio:.2f}"
        )


def producer_scores(store: PredictionStore, sizes: Sequence[int]) -> list[ProducerScores]:
    """Every full-class producer prediction in the store, grouped by model, in store order."""
    models: dict[str, ProducerScores] = {}
    for pred in store.list():
        attrs = pred.attrs
        source = attrs.get("source") or {}
        if source.get("type") != "producer" or "subset" in attrs or pred.split not in SPLITS:
            continue
        size = int(attrs["test_size"])
        if size not in sizes:
            continue
        base = pred.name.removesuffix(f"-s{size}")
        model = models.setdefault(
            base, ProducerScores(base, str(attrs.get("backbone")), str(attrs.get("loss")))
        )
        model.top1[(pred.split, size)] = float(pred.metrics.get("top1", float("nan")))
    return list(models.values())


def _table(title: str, caption: str = "") -> Table:
    """A compact table that fits 80 columns: the box's one-space dividers, no padding."""
    return Table(
        title=title,
        caption=caption or None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
        pad_edge=False,
        padding=(0, 0),
    )


def producers_table(models: Sequence[ProducerScores], sizes: Sequence[int], title: str) -> Table:
    """Per-model top-1 (%) on val and test at each test size, like the seed's Tables I–III."""
    table = _table(title, f"top-1 % on val and test at test sizes {', '.join(map(str, sizes))} px")
    table.add_column("backbone", no_wrap=True)
    table.add_column("loss", no_wrap=True)
    for split in SPLITS:
        for size in sizes:
            table.add_column(f"{split}\n{size}", justify="right", no_wrap=True)
    for m in models:
        cells = [_pct(m.top1.get((split, size))) for split in SPLITS for size in sizes]
        table.add_row(m.backbone, m.loss, *cells)
    return table


def nodes_table(results: Sequence[NodeResult], output: str) -> Table:
    """Each fusion node's top-1 (%) and its gain over its best input, in points."""
    table = _table(
        "fusion graph",
        "top-1 %; gain: top-1 minus the best input's, in points; * the graph's output",
    )
    table.add_column("node", no_wrap=True)
    table.add_column("combiner", no_wrap=True)
    table.add_column("inputs", justify="right", no_wrap=True)
    for split in SPLITS:
        table.add_column(split, justify="right", no_wrap=True)
        table.add_column("gain", justify="right", no_wrap=True)
    for r in results:
        n_inputs = sum(len(v) for v in r.inputs.values())
        cells = []
        for split in SPLITS:
            gain = r.gain.get(split)
            cells += [
                _pct(r.metrics.get(split, {}).get("top1")),
                "" if gain is None else f"{100 * gain:+.2f}",
            ]
        name = r.id + (" *" if r.id == output else "")
        table.add_row(name, r.combiner, str(n_inputs), *cells)
    return table


def frontier_table(result: dict[str, Any], rows: Sequence[tuple[str, str]]) -> Table:
    """Top-1 (%) and GFLOPs per image of ``rows`` ((role, prediction name)), from the JSON of
    ``ee frontier STORE --split SPLIT --json``; ● where the prediction is on that frontier."""
    split = result["split"]
    points = {p["name"]: p for p in result["points"]}
    table = _table(
        f"accuracy–cost on {split}",
        f"top-1 % on {split}; GFLOPs per image, all views; ● on the frontier of every "
        f"prediction (`ee frontier --split {split}`)",
    )
    for column in ("", "prediction", split, "GFLOPs", "frontier"):
        table.add_column(column, justify="left" if column in ("", "prediction") else "right")
    for role, name in rows:
        p = points.get(name)
        if p is None:
            table.add_row(role, name, "—", "?", "")
            continue
        mark = "●" if p["frontier"] else ""
        table.add_row(role, name, _pct(p["top1"]), f"{p['gflops']:.4g}", mark)
    return table


def class_accuracy(store: PredictionStore, name: str, split: str) -> np.ndarray:
    """Per-class top-1 of a stored prediction on a labelled split."""
    labels = np.asarray(store.split(split).labels)
    predicted = store.read(name, split)
    if predicted.ndim == 2:
        predicted = predicted_class(predicted)
    return per_class_accuracy(predicted, labels, len(store.classes))


def weak_classes_table(
    store: PredictionStore, weak: Sequence[str], before: str, after: str
) -> Table:
    """Accuracy (%) of the weak classes before (``before``) and after (``after``) coverage."""
    classes = list(store.classes)
    table = _table(f"weak classes: {before} → {after}", "per-class top-1 %")
    table.add_column("class", no_wrap=True)
    acc = {}
    for split in SPLITS:
        for name in (before, after):
            table.add_column(f"{split}\n{name}", justify="right", no_wrap=True)
            acc[(split, name)] = class_accuracy(store, name, split)
    for cls in weak:
        i = classes.index(cls)
        table.add_row(cls, *[_pct(acc[(s, n)][i]) for s in SPLITS for n in (before, after)])
    return table


def summary(
    store: PredictionStore, models: Sequence[ProducerScores], fused: str, covered: str
) -> Summary:
    """The best single model on test (a report, not a choice: nothing is picked by it)."""
    best = max(models, key=lambda m: m.best("test"))
    return Summary(
        best_single=best.name,
        best_single_test=best.best("test"),
        fused_test=_top1(store, fused, "test"),
        covered_test=_top1(store, covered, "test"),
    )


def _top1(store: PredictionStore, name: str, split: str) -> float:
    return float(store.get(name, split).metrics.get("top1", float("nan")))


def _pct(value: float | None) -> str:
    if value is None or value != value:
        return "—"
    return f"{100 * value:.2f}"
