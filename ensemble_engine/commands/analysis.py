"""``ee weak-classes``: the classes a stored prediction gets wrong most often.

The seed ensemble trained specialists on the classes its vote confused; this command finds them
in any stored prediction (a producer's, an import, a fusion node's labels) from its per-class
accuracy on a labelled split, and writes them as the class list ``ee produce --subset`` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..combiner import OTHER
from ..errors import EEError, StoreError
from ..metrics import per_class_accuracy, predicted_class
from ..outputs import STDOUT, is_stdout, write_output
from ..store import PredictionStore, open_store, parse_id


@dataclass(frozen=True)
class ClassAccuracy:
    """One class of a prediction's class space: its id, labelled rows and top-1 accuracy."""

    cls: str
    n: int
    accuracy: float  # NaN where the split has no labelled row of the class

    def to_dict(self) -> dict:
        acc = None if math.isnan(self.accuracy) else self.accuracy
        return {"class": self.cls, "n": self.n, "accuracy": acc}


def class_accuracies(store: PredictionStore, name: str, split: str) -> list[ClassAccuracy]:
    """Per-class top-1 of prediction ``name/split``, in the prediction's class space.

    True labels are mapped into that space as the store maps them for metrics (a class outside a
    specialist's subset counts as ``__other__``). Scores are read a row block at a time, and a
    row's predicted class is the one ``ee export`` writes (ties to the lowest class index).
    """
    pred = store.get(name, split)
    classes = store.classes_of(pred)
    position = {c: i for i, c in enumerate(classes)}
    other = position.get(OTHER, -1)
    to_pred = np.array([position.get(c, other) for c in store.classes] + [-1], dtype=np.int64)
    labels = to_pred[store.split(split).labels.astype(np.int64)]  # label -1 stays -1
    if not (labels >= 0).any():
        raise StoreError(
            f"split {split!r} has no labels for {pred.id}'s classes; use a labelled split "
            "(--split val)"
        )
    predicted = np.empty(len(labels), dtype=np.int64)
    for rows, block in store.iter_rows(name, split):
        predicted[rows] = block if pred.kind == "labels" else predicted_class(block)
    accuracy = per_class_accuracy(predicted, labels, len(classes))
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    return [
        ClassAccuracy(c, int(n), float(a))
        for c, n, a in zip(classes, counts, accuracy, strict=True)
    ]


def weak_classes(accuracies: list[ClassAccuracy], threshold: float) -> list[ClassAccuracy]:
    """Classes below ``threshold``, worst first (``__other__`` and unseen classes never)."""
    weak = [a for a in accuracies if a.cls != OTHER and a.accuracy < threshold]  # NaN: False
    return sorted(weak, key=lambda a: (a.accuracy, a.cls))


def select_weak(
    accuracies: list[ClassAccuracy], threshold: float, *, max_k: int | None = None, min_k: int = 0
) -> list[ClassAccuracy]:
    """The classes ``ee weak-classes`` picks, worst first: those below ``threshold``, at most
    ``max_k``; where fewer are below it, the ``min_k`` worst classes whatever their accuracy.

    ``__other__`` and classes without a labelled row are never picked. A specialist needs a
    choice between at least two subset classes to be of use, so ``ee demo`` asks ``min_k=2``.
    """
    if min_k < 0 or (max_k is not None and max_k < 0):
        raise EEError(f"--min {min_k} / --max {max_k}: class counts cannot be negative")
    if max_k is not None and min_k > max_k:
        raise EEError(f"--min {min_k} is more than --max {max_k}; lower --min or raise --max")
    weak = weak_classes(accuracies, threshold)
    if len(weak) < min_k:
        seen = [a for a in accuracies if a.cls != OTHER and not math.isnan(a.accuracy)]
        weak = sorted(seen, key=lambda a: (a.accuracy, a.cls))[:min_k]
    return weak if max_k is None else weak[:max_k]


def weak_class_ids(
    store: PredictionStore,
    name: str,
    split: str,
    threshold: float,
    *,
    max_k: int | None = None,
    min_k: int = 0,
) -> list[str]:
    """The class ids ``ee weak-classes STORE NAME --split SPLIT --threshold T --max K --min M``
    picks (``select_weak`` over ``class_accuracies``), worst first."""
    found = select_weak(class_accuracies(store, name, split), threshold, max_k=max_k, min_k=min_k)
    return [a.cls for a in found]


def _table(rows: list[ClassAccuracy]):
    from rich.table import Table

    table = Table("class", "n", "accuracy")
    for row in rows:
        table.add_row(row.cls, str(row.n), f"{row.accuracy:.3f}")
    return table


@click.command("weak-classes")
@click.argument("store")
@click.argument("prediction")
@click.option("--split", default="val", show_default=True, help="Labelled split to measure on.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="A class is weak when its accuracy is below this.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the weak class ids here, one per line (default or '-': stdout).",
)
@click.option(
    "--max",
    "max_k",
    type=click.IntRange(min=0),
    default=None,
    help="Keep at most this many, the worst first (default: all below the threshold).",
)
@click.option(
    "--min",
    "min_k",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Where fewer are below the threshold, take this many worst classes instead.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every class's accuracy as JSON.")
def weak_classes_command(
    store: str,
    prediction: str,
    split: str,
    threshold: float,
    output: Path | None,
    max_k: int | None,
    min_k: int,
    as_json: bool,
) -> None:
    """Find the classes that PREDICTION gets right less often than the threshold.

    PREDICTION is a name (measured on --split) or NAME/SPLIT. The class ids go to -o FILE (or
    stdout), one per line, ready for `ee produce RECIPE --subset FILE`; a table of them (class,
    labelled images, accuracy) is printed too. --max K keeps the K worst of them; --min K takes
    the K worst classes whatever their accuracy where fewer fall below the threshold (what
    `ee demo` does with --threshold 0.99 --max 3 --min 2).

    \b
    Example:
      ee weak-classes ee.zarr resnet18-ce-s46 --threshold 0.8 --max 3 --min 2 -o weak.txt
    """
    from rich.console import Console

    name, split = parse_id(prediction) if "/" in prediction else (prediction, split)
    select_weak([], threshold, max_k=max_k, min_k=min_k)  # refuse bad counts before reading
    st = open_store(store, "r")
    accuracies = class_accuracies(st, name, split)
    weak = select_weak(accuracies, threshold, max_k=max_k, min_k=min_k)
    weak_ids = {a.cls for a in weak}  # the file lists them in class order
    text = "".join(f"{a.cls}\n" for a in accuracies if a.cls in weak_ids)
    to_stdout = is_stdout(output)
    if not to_stdout:
        write_output(output, text)  # type: ignore[arg-type]
    if as_json:
        payload = {
            "prediction": f"{name}/{split}",
            "threshold": threshold,
            "max": max_k,
            "min": min_k,
            "weak": [a.cls for a in weak],
            "classes": [a.to_dict() for a in accuracies],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    console = Console(stderr=to_stdout)
    console.print(f"{name}/{split}: {len(weak)} of {len(accuracies)} classes below {threshold:g}")
    if weak:
        console.print(_table(weak))
    if to_stdout:
        write_output(STDOUT, text)
    else:
        console.print(f"wrote {output} ({len(weak)} class ids)")
