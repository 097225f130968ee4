"""A prediction's inference cost per image: the ``cost`` attr (schemas/README.md, "Cost").

``{gflops, params, views, images_per_s, device, members}``: forward FLOPs per image at the
prediction's test size times its views (in 1e9, as ``torch.utils.flop_counter`` counts them),
the parameter count, the number of TTA views, images per second measured while predicting
(all views), the device's name, and the producer predictions (names) whose cost it is.

A producer writes its own (``members: [own name]``); a combiner output sums the cost of its
distinct members (``fused_cost``); an import carries one only where ``--fact`` gives it. Where
a member's cost is unknown (no ``cost``, or ``gflops`` null) the sum is unknown too: its
``gflops``, ``params`` and ``images_per_s`` are null and ``unknown`` names those members,
never a silent zero; ``views`` and ``device`` are then those of the members with a known cost.
This module is plain Python: the store-only commands that call it load no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: ``ee import --fact`` keys folded into ``cost`` (not kept as facts of their own).
COST_FACTS = ("gflops", "params", "images_per_s", "views")


def cost_known(cost: Any) -> bool:
    """Whether ``cost`` is a cost attr with a known ``gflops``."""
    return isinstance(cost, Mapping) and cost.get("gflops") is not None and not cost.get("unknown")


def fused_cost(
    inputs: Sequence[str],
    attrs_of: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, Any]:
    """The ``cost`` of a combiner output over ``inputs`` (names), summed over distinct members.

    ``attrs_of(name)`` gives a prediction's attrs on the output's split (None: not stored).
    Members are the union of the inputs' members (an input without ``cost`` is its own, with
    an unknown cost). ``gflops`` and ``views`` add up over members; ``params`` over distinct
    runs (a member's ``run`` fact: one model predicted at several sizes counts once; a member
    without one counts on its own); images/s as the members run one after another,
    ``1 / sum(1 / images_per_s)``; ``device`` where all members share one.
    """
    members: dict[str, Mapping[str, Any] | None] = {}
    for name in inputs:
        attrs = attrs_of(name) or {}
        cost = attrs.get("cost")
        names = cost.get("members") if isinstance(cost, Mapping) else None
        for member in names if isinstance(names, list) and names else [name]:
            if member not in members:
                members[member] = attrs if member == name else attrs_of(member)
    own = {m: (a or {}).get("cost") for m, a in members.items()}
    unknown = [m for m, c in own.items() if not (cost_known(c) and c.get("members") == [m])]
    known = [m for m in own if m not in unknown]
    devices = {own[m].get("device") for m in known}
    views = sum(int(own[m].get("views") or 0) for m in known)
    out: dict[str, Any] = {
        "gflops": None,
        "params": None,
        "views": views,
        "images_per_s": None,
        "device": devices.pop() if len(devices) == 1 else None,
        "members": list(members),
    }
    if unknown:
        out["unknown"] = unknown
        return out
    out["gflops"] = sum(float(own[m]["gflops"]) for m in known)
    out["params"] = _params(known, own, members)
    rates = [own[m].get("images_per_s") for m in known]
    if all(isinstance(r, (int, float)) and r > 0 for r in rates):
        out["images_per_s"] = 1.0 / sum(1.0 / float(r) for r in rates)
    return out


def _params(
    known: list[str],
    own: Mapping[str, Any],
    members: Mapping[str, Mapping[str, Any] | None],
) -> int | None:
    """Parameters summed over distinct runs; None where any is unknown."""
    by_run: dict[str, Any] = {}
    for m in known:
        run = (members[m] or {}).get("run")
        key = f"run:{run}" if isinstance(run, str) and run else f"member:{m}"
        by_run.setdefault(key, own[m].get("params"))
    if any(not isinstance(p, int) for p in by_run.values()):
        return None
    return sum(by_run.values())
