"""The report's figures, drawn with matplotlib's object API (Agg, no pyplot state) as PNG.

Each function returns base64 PNG text for an ``<img src="data:image/png;base64,...">``, so the
HTML carries its images and opens anywhere, offline.
"""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .dag import Dag
from .data import Agreement, CoverageView
from .frontier import Frontier

DPI = 110
COLOURS = {"producer": "#d6e6f5", "group": "#d6e6f5", "combiner": "#fde2c4", "missing": "#e5e5e5"}


def to_png_base64(fig: Figure, tight: bool = True) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _size_key(size: str) -> tuple[int, float | str]:
    try:
        return (0, float(size))
    except ValueError:
        return (1, size)


def producer_bars(cells: dict[str, dict[tuple[str, str], list[float]]]) -> str:
    """Top-1 of each backbone-loss group, one bar per test size, one panel per split.

    ``cells`` is ``data.producer_top1``: where several predictions share a bar, their mean.
    """
    groups = sorted({g for c in cells.values() for g, _ in c})
    sizes = sorted({s for c in cells.values() for _, s in c}, key=_size_key)
    values = [v for c in cells.values() for vs in c.values() for v in vs]
    stacked = len(groups) > 8
    panel_w = min(16.0, 1.5 + 0.3 * len(groups) * max(1, len(sizes)) + 0.4 * len(groups))
    shape = (len(cells), 1) if stacked else (1, len(cells))
    size = (panel_w, 3.6 * len(cells)) if stacked else (panel_w * len(cells), 3.8)
    fig = Figure(figsize=size, layout="constrained")
    axes = np.atleast_1d(fig.subplots(*shape, sharey=True, squeeze=False).ravel())
    width = 0.8 / len(sizes)
    cmap = matplotlib.colormaps["tab10"]
    x = np.arange(len(groups))
    labelled = len(groups) * len(sizes) <= 16  # room to print each bar's value
    for ax, (split, cell) in zip(axes, cells.items(), strict=True):
        for j, test_size in enumerate(sizes):
            heights = [
                np.mean(cell[(g, test_size)]) if (g, test_size) in cell else np.nan for g in groups
            ]
            bars = ax.bar(
                x + (j - (len(sizes) - 1) / 2) * width,
                heights,
                width,
                label=f"test size {test_size}",
                color=cmap(j % 10),
            )
            if labelled:
                labels = ["" if np.isnan(h) else f"{h:.3f}" for h in heights]
                ax.bar_label(bars, labels=labels, fontsize=7, padding=2, rotation=90)
        ax.set_title(f"{split}: producer top-1", fontsize=10)
        ax.set_xticks(
            x,
            [_short(g) for g in groups],
            rotation=35 if len(groups) > 3 else 0,
            ha="right" if len(groups) > 3 else "center",
            fontsize=8,
        )
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    bottom = max(0.0, np.floor((min(values) - 0.05) * 20) / 20)  # zoom in on the differences
    axes[0].set_ylim(bottom, min(1.0, max(values)) + (0.08 if labelled else 0.04))
    axes[0].set_ylabel("top-1" + (f" (axis from {bottom:.2f})" if bottom > 0 else ""))
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return to_png_base64(fig)


def agreement_heatmap(agreement: Agreement) -> str:
    """Error correlation between producers: red pairs fail together, blue ones complement."""
    n = len(agreement.names)
    side = float(np.clip(2.5 + 0.25 * n, 5.0, 11.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#cccccc")
    image = ax.imshow(np.ma.masked_invalid(agreement.matrix), cmap=cmap, vmin=-1, vmax=1)
    fontsize = 8 if n <= 20 else 6
    names = [_short(name, 28) for name in agreement.names]
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                value = agreement.matrix[i, j]
                text = "–" if np.isnan(value) else f"{value:.2f}"
                colour = "white" if abs(np.nan_to_num(value)) > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(f"error correlation on {agreement.split}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="correlation of 0/1 errors")
    return to_png_base64(fig)


def coverage_bars(view: CoverageView, class_labels: list[str]) -> str:
    """Per-class top-1 of the base and of the covered output, on the classes worth a look."""
    rows = view.rows()
    covered = {i for idx in view.specialists.values() for i in idx}
    names = [("* " if i in covered else "") + _short(class_labels[i], 18) for i in rows]
    fig = Figure(
        figsize=(float(np.clip(2.0 + 0.45 * len(rows), 6.0, 16.0)), 4.0), layout="constrained"
    )
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(
        x - 0.2, view.before[rows], 0.4, label=f"before: {_short(view.base, 30)}", color="#9bbbd9"
    )
    ax.bar(x + 0.2, view.after[rows], 0.4, label=f"after: {_short(view.node, 30)}", color="#e8933a")
    ax.set_xticks(
        x,
        names,
        rotation=45 if len(rows) > 8 else 0,
        ha="right" if len(rows) > 8 else "center",
        fontsize=8,
    )
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("per-class top-1")
    ax.set_title(
        f"per-class top-1 on {view.split} before and after coverage (* = covered by a specialist)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return to_png_base64(fig)


def dag_figure(dag: Dag) -> str:
    """Layers left to right; each box names a node (or producer group) and its top-1."""
    layers = dag.layers()
    tallest = max(len(layer) for layer in layers)
    fig = Figure(
        figsize=(max(6.0, 2.7 * len(layers)), max(2.5, 0.75 * tallest + 0.8)),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(-(tallest + 0.2) / 2, (tallest + 0.2) / 2)
    boxes = {}
    for depth, layer in enumerate(layers):
        for i, node_id in enumerate(layer):
            node = dag.nodes[node_id]
            y = (len(layer) - 1) / 2 - i
            boxes[node_id] = ax.text(
                depth,
                y,
                node.label,
                ha="center",
                va="center",
                fontsize=8,
                zorder=3,
                fontweight="bold" if node.output else "normal",
                bbox={
                    "boxstyle": "round,pad=0.4",
                    "fc": COLOURS.get(node.kind, "#eeeeee"),
                    "ec": "black" if node.output else "#777777",
                    "lw": 1.8 if node.output else 0.8,
                },
            )
    # Arrows are clipped to the box patches as they stood at the previous draw, so lay the boxes
    # out once first, at the final size (no tight bbox, which would move them again).
    FigureCanvasAgg(fig).draw()
    for src, dst in dag.edges:
        ax.annotate(
            "",
            xy=boxes[dst].get_position(),
            xytext=boxes[src].get_position(),
            zorder=1,
            arrowprops={
                "arrowstyle": "-|>",
                "color": "#888888",
                "lw": 0.8,
                "patchA": boxes[src].get_bbox_patch(),
                "patchB": boxes[dst].get_bbox_patch(),
                "shrinkA": 2,
                "shrinkB": 2,
                "connectionstyle": "arc3,rad=0.0",
            },
        )
    title = "fusion graph" + (f" {dag.title}" if dag.title else "") + f", top-1 on {dag.split}"
    ax.set_title(title, fontsize=10)
    return to_png_base64(fig, tight=False)


def frontier_figure(frontier: Frontier, label_at_most: int = 40) -> str:
    """Top-1 against GFLOPs per image (log axis): every point, the frontier joined as a step.

    Points are labelled by name (the frontier's always, the others while there are few).
    """
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    floor = min((p.gflops for p in frontier.points if p.gflops > 0), default=1.0) / 2
    x = [max(p.gflops, floor) for p in frontier.points]  # a zero cost cannot sit on a log axis
    y = [p.top1 for p in frontier.points]
    on = [frontier.on_frontier(p) for p in frontier.points]
    ax.scatter(x, y, s=22, color="#9bbbd9", label="prediction", zorder=2)
    fx = [xi for xi, o in zip(x, on, strict=True) if o]
    fy = [yi for yi, o in zip(y, on, strict=True) if o]
    ax.plot(fx, fy, "-o", drawstyle="steps-post", color="#e8933a", label="frontier", zorder=3)
    for xi, yi, o, p in zip(x, y, on, frontier.points, strict=True):
        if o or len(frontier.points) <= label_at_most:
            ax.annotate(
                _short(p.name, 26),
                (xi, yi),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                color="black" if o else "#555555",
            )
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (log scale)")
    ax.set_ylabel(f"top-1 on {frontier.split}")
    ax.set_title(f"accuracy–cost frontier on {frontier.split}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return to_png_base64(fig)
