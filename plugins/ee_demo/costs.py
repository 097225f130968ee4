"""The demo's cost budget and frontier, read through ``ee frontier STORE --split S --json``.

A built-in plugin does not import another one, so the frontier (a prediction's top-1 on the
split, its GFLOPs per image, whether it is on the Pareto frontier) comes from the command a user
types, run in a child process: the demo's numbers are the command's numbers.

The budget of the demo's ``budgeted`` node is the cost of the best single prediction on val
(never test): the most accurate of the demo's producer predictions on val, the cheaper one on a
tie, read before any fusion node is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ensemble_engine import EEError

#: The token of the shipped graph.yaml that the demo replaces with the budget.
BUDGET_TOKEN = "BEST_SINGLE_GFLOPS"


def frontier(store: Path, split: str) -> dict[str, Any]:
    """``ee frontier STORE --split SPLIT --json``, parsed."""
    args = [sys.executable, "-m", "ensemble_engine", "frontier", str(store), "--split", split]
    proc = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise EEError(f"ee frontier {store} --split {split} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def best_single(points: Iterable[dict[str, Any]], names: Iterable[str]) -> dict[str, Any]:
    """The most accurate point among ``names`` (the cheaper one on a tie, then by name)."""
    wanted = set(names)
    chosen = [p for p in points if p["name"] in wanted]
    if not chosen:
        raise EEError("no producer prediction has both a top-1 and a known cost on val")
    return min(chosen, key=lambda p: (-p["top1"], p["gflops"], p["name"]))


def graph_text(template: str, gflops: float) -> str:
    """The shipped graph with the budget written in (``repr``: the exact float, no rounding)."""
    if template.count(BUDGET_TOKEN) != 1:
        raise EEError(f"the demo graph must hold {BUDGET_TOKEN} once")
    return template.replace(BUDGET_TOKEN, repr(float(gflops)))
