"""``ee produce RECIPE --plan``: what the timm producer would do, without doing it.

``plan_request`` runs the checks ``produce`` starts with (``producer.checked_request``: the
recipe, the data's images, the device, the names, ``--resume``'s run folder; and, where the store
exists, that the names are free and the data's splits are the ones registered there), then
reports the resolved recipe with each value's origin, the run id and folder, and the predictions
it would write. It trains nothing, creates no run folder, opens no store that does not exist and
registers no split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ensemble_engine import ProduceRequest, StoreOnFirstUse, check_splits

from .data_profile import resolve_request
from .prediction import base_name, check_names_free, prediction_splits
from .producer import checked_request


def plan_request(request: ProduceRequest) -> dict[str, Any]:
    """The plan of ``request`` as plain JSON-able values (see ``ee produce --help``)."""
    resolved = resolve_request(request)
    ok = checked_request(request, None, recipe=resolved.recipe)
    recipe = ok.recipe
    splits = prediction_splits(ok.source, recipe.splits or None)
    name = request.name or base_name(recipe)
    store_exists = not isinstance(request.store, StoreOnFirstUse)
    if store_exists:  # what produce would refuse before it writes, the plan refuses too
        if not request.force:
            own = ok.run_id if request.resume else None
            check_names_free(request.store, name, recipe.test_sizes, splits, own_run=own)
        samples = {split: ok.source.samples(split) for split in ok.source.split_names()}
        check_splits(request.store, ok.source, samples)
    values = recipe.to_dict()
    sources = {"producer": resolved.sources["backbone"]}
    sources.update({key: resolved.sources[key] for key in values if key in resolved.sources})
    return {
        "recipe": values,
        "sources": sources,
        "notes": [resolved.defaults_line],
        "run_id": ok.run_id,
        "run_dir": str(Path(request.runs_dir) / ok.run_id),
        "resume": request.resume,
        "data": {
            "root": str(ok.source.root),
            "classes": len(ok.classes),
            "train": len(ok.train_samples),
            "val": len(ok.val_samples),
        },
        "store": request.store.path,
        "predictions": [
            f"{name}-s{size}/{split}" for size in recipe.test_sizes for split in splits
        ],
    }
