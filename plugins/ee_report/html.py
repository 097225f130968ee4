"""The report page: one HTML file with inline CSS and embedded PNGs, and its tables.

Nothing is fetched when the page opens (no scripts, fonts or stylesheets from elsewhere), so the
file can be mailed, archived or opened offline and still shows everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from ensemble_engine import Prediction

from .dag import Dag
from .data import CoverageView, ReportData, is_subset, source_type

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""
SOURCE_ORDER = {"producer": 0, "import": 1, "combiner": 2}


def num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "–"
    return True


def table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain table; columns whose cells are all numbers (or a dash) are right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    numeric = [all(_is_number(row[j]) for row in rows) for j in range(len(headers))]
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if numeric[j] else f"<td>{escape(c)}</td>"
            for j, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<table id="{escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def figure(fig_id: str, png_base64: str, caption: str) -> str:
    return (
        f'<figure id="{escape(fig_id)}"><img alt="{escape(caption)}" '
        f'src="data:image/png;base64,{png_base64}"><figcaption>{escape(caption)}</figcaption>'
        "</figure>"
    )


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def section(section_id: str, title: str, parts: Iterable[str]) -> str:
    return f'<section id="{escape(section_id)}"><h2>{escape(title)}</h2>{"".join(parts)}</section>'


def page(title: str, intro: Sequence[str], sections: Iterable[str]) -> str:
    lead = "".join(f"<p>{escape(line)}</p>" for line in intro)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{lead}{''.join(sections)}</body></html>\n"
    )


def _classes_cell(data: ReportData, pred: Prediction) -> str:
    classes = data.store.classes_of(pred)
    return f"subset of {len(classes)}" if is_subset(data.store, pred) else str(len(classes))


def metrics_table(data: ReportData) -> str:
    """Every complete prediction with its facts and stored metrics."""
    split_rank = {s: i for i, s in enumerate(data.splits)}
    preds = sorted(
        data.preds,
        key=lambda p: (
            split_rank.get(p.split, len(split_rank)),
            p.split,
            SOURCE_ORDER.get(source_type(p), 3),
            p.name,
        ),
    )
    rows = []
    for p in preds:
        facts = " ".join(
            f"{k}={p.attrs[k]}"
            for k in ("backbone", "loss", "test_size", "tta", "combiner")
            if p.attrs.get(k) is not None
        )
        m = p.metrics
        n = m.get("n")
        rows.append(
            [
                p.name,
                p.split,
                p.kind,
                source_type(p),
                facts,
                _classes_cell(data, p),
                num(m.get("top1")),
                num(m.get("top5")),
                num(m.get("nll")),
                "–" if n is None else int(n),
            ]
        )
    headers = [
        "prediction",
        "split",
        "kind",
        "source",
        "facts",
        "classes",
        "top-1",
        "top-5",
        "NLL",
        "n",
    ]
    return table("metrics", headers, rows)


def node_table(data: ReportData, dag: Dag) -> str:
    """Each fusion node's top-1 per split and its gain over the best full-class input."""
    splits = [s for s in data.splits if data.combiners(s)] or [dag.split]
    rows = []
    for node_id, node in dag.nodes.items():
        if node.kind != "combiner":
            continue
        row: list[object] = [node_id, node.combiner or "?", node.layer]
        preds = [data.get(node_id, s) for s in splits]
        inputs = next((p.attrs.get("inputs") or [] for p in preds if p is not None), [])
        shown = ", ".join(str(i) for i in inputs[:4]) + (" …" if len(inputs) > 4 else "")
        row.append(f"{len(inputs)}: {shown}")
        for p in preds:
            row += [
                num(None if p is None else p.metrics.get("top1")),
                num(None if p is None else data.gain(p), signed=True),
            ]
        rows.append(row)
    headers = ["node", "combiner", "layer", "inputs"]
    for s in splits:
        headers += [f"top-1 {s}", f"gain {s}"]
    return table("nodes", headers, rows)


def weak_classes_table(view: CoverageView, class_labels: Sequence[str]) -> str:
    """The classes of the coverage figure, weakest first, with the specialists covering them."""
    rows = []
    for i in view.rows():
        before, after = view.before[i], view.after[i]
        missing = before != before or after != after  # NaN: no labelled row of the class
        covering = [name for name, idx in view.specialists.items() if i in idx]
        rows.append(
            [
                class_labels[i],
                int(view.count[i]),
                "–" if missing else num(float(before)),
                "–" if missing else num(float(after)),
                "–" if missing else num(float(after - before), signed=True),
                ", ".join(covering) or "–",
            ]
        )
    headers = ["class", "n", f"top-1 {view.base}", f"top-1 {view.node}", "change", "covered by"]
    return table("weak-classes", headers, rows)
