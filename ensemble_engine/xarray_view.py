"""A prediction as a labelled array: ``PredictionStore.to_xarray`` builds it here.

xarray is optional (``pip install 'ensemble-engine[xarray]'``): it is imported only when asked
for, and its absence is one line naming the extra. The store itself needs no ee to be opened in
xarray (``xr.open_zarr(STORE, group="predictions/NAME/SPLIT", consolidated=False)``: every array
names its dimensions, see schemas/README.md); ``to_xarray`` adds what the arrays alone lack, the
sample ids and class ids as coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import EEError
from .records import Prediction

EXTRA = "pip install 'ensemble-engine[xarray]'"


def require_xarray() -> Any:
    """The ``xarray`` module, or an EEError naming the extra that installs it."""
    try:
        import xarray
    except ImportError:
        raise EEError(f"to_xarray needs xarray, which is not installed: {EXTRA}") from None
    return xarray


def labelled(
    xr: Any, pred: Prediction, values: np.ndarray, sample_ids: Sequence[str], classes: list[str]
) -> Any:
    """``values`` as a DataArray named as the stored array: ``scores(sample, class)``, or for
    kind labels ``label(sample)`` (indices into ``classes``, recorded in its attrs' ``classes``:
    a 1-D array has no class coordinate)."""
    attrs = dict(pred.attrs)
    coords: dict[str, Any] = {"sample": np.asarray(sample_ids, dtype=object)}
    if pred.kind == "labels":
        name, dims = "label", ("sample",)
        attrs["classes"] = list(classes)
    else:
        name, dims = "scores", ("sample", "class")
        coords["class"] = np.asarray(classes, dtype=object)
    return xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=attrs)
