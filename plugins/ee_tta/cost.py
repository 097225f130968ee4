"""The ``cost`` attr of what the predictor writes (schemas/README.md, "Cost").

Per image: ``gflops`` (the caller's forward GFLOPs per image and view at the test size, times
the views; null where the caller counted none), ``params`` (the model's parameter count),
``views``, ``images_per_s`` (images over the seconds the forward passes of every view took
while predicting the split, ``streaming.SplitBatches.run``), ``device`` (its name) and
``members`` (the prediction's own name). A kept view's own prediction costs one view: its
share of the FLOPs, and the split's rate times the views (each view runs the same model at the
same size). The cost is written as the writers open with ``images_per_s`` null, and the
measured rate replaces it at close; under torchrun the rate stays null (every rank times only
its own rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    """``cpu``, the GPU's name (``NVIDIA H100 80GB HBM3``), or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def view_cost(cost: Mapping[str, Any], name: str, views: int) -> dict[str, Any]:
    """One view's own prediction ``name``: the merged ``cost`` of ``views`` views, per view."""
    gflops, rate = cost.get("gflops"), cost.get("images_per_s")
    return {
        **cost,
        "gflops": None if gflops is None else gflops / views,
        "views": 1,
        "images_per_s": None if rate is None else rate * views,
        "members": [name],
    }


class SizeCosts:
    """The cost of each test size's prediction (and its kept views') of one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        names: Mapping[int, str],
        kept: Sequence[str],
        gflops: Mapping[int, float] | None,
        device: torch.device,
        views: int,
    ) -> None:
        self.names, self.kept, self.views = names, list(kept), views
        self.gflops = dict(gflops or {})
        self.params = sum(p.numel() for p in model.parameters())
        self.device = device_name(device)

    def cost(self, size: int, images_per_s: float | None = None) -> dict[str, Any]:
        per_view = self.gflops.get(size)
        return {
            "gflops": None if per_view is None else float(per_view) * self.views,
            "params": int(self.params),
            "views": self.views,
            "images_per_s": images_per_s,
            "device": self.device,
            "members": [self.names[size]],
        }

    def measured(self, writers: Mapping[Any, Any], rows: int, seconds: Sequence[float]) -> None:
        """Set each writer's cost with the rate measured over ``rows`` (``late_attrs``)."""
        for size, spent in zip(self.names, seconds, strict=True):
            rate = rows / spent if spent > 0 and rows else None
            cost = self.cost(size, rate)
            writers[size, None].late_attrs["cost"] = cost
            for label in self.kept:
                writer = writers[size, label]
                writer.late_attrs["cost"] = view_cost(cost, writer.name, self.views)
