"""The coverage section's two tables: where the weak classes' errors come from and go, before
and after coverage, and what each specialist's covered result scores next to the base.

The weak classes are those the coverage node's specialists cover. The seed covered its weak
classes only where the fused label already lay among them because its specialists *pulled*
images of other classes into the weak classes; the confusion table shows that traffic: images of
other classes labelled as a weak class (pulled in) and images of a weak class labelled as
another class (pulled out), for the base and for the covered result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from .data import CoverageView, ReportData, predicted_labels, top1_of
from .html import num, table

TOP = 3  # classes named per cell


def _names(classes: np.ndarray, class_labels: Sequence[str]) -> str:
    """``name×count`` of the commonest classes, commonest first (ties by class index)."""
    counts = sorted(Counter(int(c) for c in classes).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{class_labels[c]}×{n}" for c, n in counts[:TOP]) or "–"


def weak_confusion(data: ReportData, view: CoverageView) -> str | None:
    """One row per weak class (and one for them all): images pulled into it from outside the
    weak classes and out of it to them, for the base and the covered result."""
    weak = sorted({i for idx in view.specialists.values() for i in idx})
    base, node = data.get(view.base, view.split), data.get(view.node, view.split)
    if not weak or base is None or node is None:
        return None
    y = data.labels[view.split]
    known = y >= 0
    y = y[known]
    preds = {
        "base": predicted_labels(data.store, base)[known],
        "node": predicted_labels(data.store, node)[known],
    }
    is_weak = np.isin(y, weak)
    labels = data.class_labels
    rows = []
    for w in [*weak, None]:
        own = is_weak if w is None else y == w
        cells = {}
        for key, p in preds.items():
            into = (p == w) if w is not None else np.isin(p, weak)
            pulled_in = into & ~is_weak
            pulled_out = own & ~np.isin(p, weak)
            cells[key] = (pulled_in, pulled_out, y[pulled_in], p[pulled_out])
        rows.append(
            [
                "all weak classes" if w is None else labels[w],
                int(own.sum()),
                int(cells["base"][0].sum()),
                int(cells["node"][0].sum()),
                _names(cells["node"][2], labels),
                int(cells["base"][1].sum()),
                int(cells["node"][1].sum()),
                _names(cells["node"][3], labels),
            ]
        )
    headers = [
        "weak class",
        "n",
        f"pulled in {view.base}",
        f"pulled in {view.node}",
        f"from ({view.node})",
        f"pulled out {view.base}",
        f"pulled out {view.node}",
        f"to ({view.node})",
    ]
    return table("weak-confusion", headers, rows)


def specialists_table(data: ReportData, view: CoverageView) -> str | None:
    """Per specialist model: its inputs, its covered result's top-1 on the split (from the
    node's state), the base's top-1, and the classes the validated policy accepted, with the
    fixes and breaks all its candidate corrections made on the fit split."""
    node = data.get(view.node, view.split)
    state = (node.attrs.get("state") or {}) if node is not None else {}
    covered = state.get("covered") or {}
    if not covered:
        return None
    base_top1 = top1_of(data.get(view.base, view.split))
    members = state.get("specialists") or {}
    decisions = state.get("decisions") or {}
    rows = []
    for spec_id, facts in covered.items():
        top1 = facts.get("top1")
        per_class = decisions.get(spec_id) or {}
        accepted = [c for c, d in per_class.items() if d.get("accept")]
        policy = "accepted: " + (", ".join(accepted) or "none") if decisions else "–"
        offered = [(d.get("fixes"), d.get("breaks")) for d in per_class.values()]
        if offered and all(f is not None and b is not None for f, b in offered):
            policy += f" (offered {sum(f for f, _ in offered)} fixes, "
            policy += f"{sum(b for _, b in offered)} breaks)"
        rows.append(
            [
                spec_id,
                ", ".join(members.get(spec_id) or [spec_id]),
                num(top1),
                num(base_top1),
                num(None if top1 is None or base_top1 is None else top1 - base_top1, signed=True),
                policy,
            ]
        )
    headers = [
        "specialist",
        "inputs",
        f"covered top-1 {view.split}",
        f"top-1 {view.base}",
        "change",
        f"policy {state.get('policy', '?')}",
    ]
    return table("covered-results", headers, rows)
