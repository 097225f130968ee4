"""A store's report: what its models score, how alike they fail, and what each fusion stage gains.

Every section stands alone and says plainly when the store lacks what it needs (labels, combiner
outputs, a coverage node), so a report of a half-built store is still useful.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_engine import OutputError, PredictionStore, is_stdout, write_output

from . import figures
from . import html as page_html
from .coverage_tables import specialists_table, weak_confusion
from .dag import COLLAPSE_AT, build_dag
from .data import (
    ReportData,
    coverage_view,
    error_agreement,
    gather,
    is_subset,
    ordered_splits,
    producer_top1,
    source_type,
    top1_of,
)
from .frontier import store_frontier

AGREEMENT_CAP = 40
AddFigure = Callable[[str, str, str], str]  # (id, base64 PNG, caption) → HTML
NO_LABELS = "no labelled split in this store, so nothing here can be scored"


@dataclass
class Report:
    html: str
    summary: str
    figures: list[str] = field(default_factory=list)  # ids of the figures drawn


def load_graph_spec(source: str | Path | None) -> Any | None:
    """A parsed graph file (for node order and the output mark), when the graph API exists."""
    if source is None:
        return None
    try:
        from ensemble_engine import load_graph
    except ImportError:
        return None
    return load_graph(source)


def build_report(
    store: PredictionStore, graph: str | Path | None = None, splits: Sequence[str] | None = None
) -> Report:
    """Gather the numbers, draw the figures and lay out the page (nothing is written)."""
    data = gather(store, splits)
    spec = load_graph_spec(graph)
    drawn: list[str] = []

    def add(fig_id: str, png: str, caption: str) -> str:
        drawn.append(fig_id)
        return page_html.figure(fig_id, png, caption)

    sections = [
        page_html.section("producers", "Producer top-1 by test size", _producers(data, add)),
        page_html.section("agreement", "Model agreement", _agreement(data, add)),
        page_html.section("coverage", "Per-class accuracy and coverage", _coverage(data, add)),
        page_html.section("fusion", "Fusion graph", _fusion(data, spec, add)),
        page_html.section("frontier", "Accuracy and cost", _frontier(data, add)),
        page_html.section(
            "predictions",
            "All predictions",
            [page_html.metrics_table(data)]
            if data.preds
            else [page_html.note("no predictions in this store")],
        ),
    ]
    title = f"ee report: {store.path}"
    return Report(page_html.page(title, _intro(data), sections), _summary(data, drawn), drawn)


def write_report(report: Report, path: str | Path) -> Path:
    """Write the page with ``ensemble_engine.outputs.write_output``: a regular file is replaced
    whole (never a half page), a device or FIFO is written directly, ``-`` is stdout. A missing
    folder is created."""
    target = Path(path)
    if not is_stdout(path) and not target.parent.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the folder {target.parent}: {exc.strerror or exc}; "
                "choose a writable file with -o"
            ) from None
    write_output(path, report.html)
    return target


def _producers(data: ReportData, add: AddFigure) -> list[str]:
    if not data.producers():
        return [page_html.note("no producer predictions in this store")]
    if not data.splits:
        return [page_html.note(NO_LABELS)]
    cells = producer_top1(data)
    if not cells:
        return [page_html.note("no producer prediction on a labelled split in this store")]
    parts = [
        add(
            "fig-producers",
            figures.producer_bars(cells),
            "top-1 of each backbone-loss group per test size",
        )
    ]
    shared = sum(len(v) > 1 for c in cells.values() for v in c.values())
    if shared:
        parts.append(
            page_html.note(
                f"{shared} bars average several predictions with the same backbone, loss and "
                "test size (seeds or TTA); the table below lists each one"
            )
        )
    return parts


def _agreement(data: ReportData, add: AddFigure) -> list[str]:
    if not data.splits:
        return [page_html.note(NO_LABELS)]
    agreement = error_agreement(data, cap=AGREEMENT_CAP)
    if agreement is None:
        return [
            page_html.note(
                f"fewer than two producer predictions on {data.primary} in this store: "
                "nothing to compare"
            )
        ]
    parts = [
        add(
            "fig-agreement",
            figures.agreement_heatmap(agreement),
            f"correlation of 0/1 errors between producers on {agreement.split}; "
            "high values: models that fail on the same images add little to a vote",
        )
    ]
    if agreement.total > len(agreement.names):
        parts.append(
            page_html.note(
                f"showing the {len(agreement.names)} best of {agreement.total} producers by top-1"
            )
        )
    if (agreement.matrix != agreement.matrix).any():
        parts.append(
            page_html.note(
                "grey: a producer without errors (or without a correct answer) has no correlation"
            )
        )
    return parts


def _coverage(data: ReportData, add: AddFigure) -> list[str]:
    if not data.splits:
        return [page_html.note(NO_LABELS)]
    view, nodes = coverage_view(data)
    if view is None:
        if nodes:
            return [
                page_html.note(
                    f"coverage node {nodes[-1]} on {data.primary}: its base input is not a "
                    "full-class prediction in this store"
                )
            ]
        return [page_html.note(f"no coverage output on {data.primary} in this store")]
    parts = [
        add(
            "fig-coverage",
            figures.coverage_bars(view, data.class_labels),
            f"per-class top-1 of {view.base} (before) and {view.node} (after) on {view.split}",
        ),
        page_html.weak_classes_table(view, data.class_labels),
    ]
    parts += [t for t in (weak_confusion(data, view), specialists_table(data, view)) if t]
    others = [n for n in nodes if n != view.node]
    if others:
        parts.append(
            page_html.note("other coverage nodes (in the tables below): " + ", ".join(others))
        )
    return parts


def _fusion(data: ReportData, spec: Any | None, add: AddFigure) -> list[str]:
    dag = build_dag(data, spec)
    if dag is None:
        return [page_html.note("no combiner outputs in this store")]
    parts = [
        add(
            "fig-fusion",
            figures.dag_figure(dag),
            f"fusion nodes in layers (longest path from the producers), top-1 on {dag.split}",
        )
    ]
    if any(n.kind == "group" for n in dag.nodes.values()):
        parts.append(
            page_html.note(
                f"more than {COLLAPSE_AT} producers feed the graph: those read by the same nodes "
                "share one box, named by the facts they share, with their best top-1"
            )
        )
    parts.append(page_html.node_table(data, dag))
    return parts


def _frontier(data: ReportData, add: AddFigure) -> list[str]:
    if not data.splits:
        return [page_html.note(NO_LABELS)]
    result = store_frontier(data.store, data.splits[0], data.preds)
    parts = []
    if result.points:
        parts += [
            add(
                "fig-frontier",
                figures.frontier_figure(result),
                f"top-1 on {result.split} against GFLOPs per image; the line joins the "
                "predictions no other one beats at no more cost",
            ),
            page_html.table(
                "frontier",
                ["prediction", "top-1", "GFLOPs", "on the frontier"],
                [
                    [
                        p.name,
                        page_html.num(p.top1),
                        f"{p.gflops:.4g}",
                        "yes" * result.on_frontier(p),
                    ]
                    for p in result.points
                ],
            ),
        ]
    else:
        parts.append(page_html.note(f"no prediction on {result.split} has a known cost"))
    if result.unknown:
        parts.append(page_html.note("cost unknown: " + ", ".join(result.unknown)))
    return parts


def _intro(data: ReportData) -> list[str]:
    st = data.store
    splits = (
        ", ".join(
            f"{s} ({st.split(s).n} samples{', labelled' if st.split(s).labelled else ''})"
            for s in ordered_splits(set(st.split_names()))
        )
        or "none"
    )
    counts = _counts(data)
    scored = ", ".join(data.splits) if data.splits else "nothing (no labelled split)"
    return [
        f"{len(st.classes)} classes; splits: {splits}.",
        f"{len(data.preds)} predictions: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f". Scored on: {scored}.",
    ]


def _counts(data: ReportData) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in data.preds:
        counts[source_type(p)] = counts.get(source_type(p), 0) + 1
    return counts


def _summary(data: ReportData, drawn: list[str]) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in _counts(data).items()) or "none"
    text = f"{len(data.preds)} predictions ({counts}), {len(drawn)} figures"
    full = [p for p in data.combiners(data.primary) if not is_subset(data.store, p)]
    pool = full or data.producers(data.primary)
    scored = [(top1_of(p), p.name) for p in pool if top1_of(p) is not None]
    if scored:
        best, name = max(scored)
        text += f"; best {name} top-1 {best:.4f} on {data.primary}"
    return text
