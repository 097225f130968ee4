"""ensemble-engine: a plugin-based ensemble engine with a stable prediction format.

The names in ``__all__`` are the plugin API: a plugin, built-in or third-party, imports the core
only as ``from ensemble_engine import …``; each name is documented in ``schemas/plugin-api.md``.
Every other module of the package may change without notice.

Only the errors and the hook markers are imported with the package. Every other name is
imported on first use (a module ``__getattr__``, PEP 562), so that ``import ensemble_engine``
and loading a plugin import neither zarr nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    AlignmentError,
    DataError,
    EEError,
    FormatVersionError,
    GraphError,
    PluginError,
    RecipeError,
    StoreError,
)
from .hookspecs import Register, hookimpl

# name → the module (relative to this package) that defines it, imported on first access.
_LAZY = {
    # producers
    "Producer": "producer",
    "ProduceRequest": "producer",
    "StoreOnFirstUse": "producer",
    "split_list": "commands.produce",
    # combiners
    "OTHER": "combiner",
    "Combiner": "combiner",
    "InputChunk": "combiner",
    "InputSource": "combiner",
    "Output": "combiner",
    "Role": "combiner",
    "softmax": "combiner",
    # datasets, splits, images
    "UNKNOWN_LABEL": "data",
    "DatasetSource": "data",
    "Sample": "data",
    "check_splits": "data",
    "open_dataset": "data",
    "register_splits": "data",
    "HoldoutSource": "holdout",
    "holdout_split": "holdout",
    "merged_samples": "holdout",
    "trained_splits": "holdout",
    "with_store_holdout": "holdout",
    "load_image": "images",
    "BatchNormalize": "batches",
    # the store: reading and writing predictions
    "Prediction": "store",
    "PredictionStore": "store",
    "check_name": "store",
    "open_store": "store",
    "PredictionWriter": "prediction_io",
    "chunk_rows_for": "prediction_io",
    "ChunkedRows": "shards",
    "Group": "shards",
    "on_rank0": "shards",
    "shard_chunk_rows": "shards",
    "write_sharded": "shards",
    "StoreLock": "locks",
    # metrics and analysis
    "per_class_accuracy": "metrics",
    "predicted_class": "metrics",
    "weak_class_ids": "commands.analysis",
    # fusion graphs
    "NodeResult": "graph",
    "execute": "graph",
    "load_graph": "graph",
    "plan": "graph",
    # registries (read side) and plugin helpers
    "Entry": "registry",
    "Registry": "registry",
    "lazy_exports": "registry",
    "PluginInfo": "plugins",
    "get_registry": "plugins",
    "plugin_info": "plugins",
    "create_loss": "losses",
    # files
    "StrictYAMLError": "strict_yaml",
    "load_yaml": "strict_yaml",
    "OutputError": "outputs",
    "is_stdout": "outputs",
    "write_output": "outputs",
}

# The plugin API: every name is documented in schemas/plugin-api.md (tests/test_plugin_api.py).
__all__ = [
    "AlignmentError",
    "BatchNormalize",
    "ChunkedRows",
    "Combiner",
    "DataError",
    "DatasetSource",
    "EEError",
    "Entry",
    "FormatVersionError",
    "GraphError",
    "Group",
    "HoldoutSource",
    "InputChunk",
    "InputSource",
    "NodeResult",
    "OTHER",
    "Output",
    "OutputError",
    "PluginError",
    "PluginInfo",
    "Prediction",
    "PredictionStore",
    "PredictionWriter",
    "ProduceRequest",
    "Producer",
    "RecipeError",
    "Register",
    "Registry",
    "Role",
    "Sample",
    "StoreError",
    "StoreLock",
    "StoreOnFirstUse",
    "StrictYAMLError",
    "UNKNOWN_LABEL",
    "check_name",
    "check_splits",
    "chunk_rows_for",
    "create_loss",
    "execute",
    "get_registry",
    "holdout_split",
    "hookimpl",
    "is_stdout",
    "lazy_exports",
    "load_graph",
    "load_image",
    "load_yaml",
    "merged_samples",
    "on_rank0",
    "open_dataset",
    "open_store",
    "per_class_accuracy",
    "plan",
    "plugin_info",
    "predicted_class",
    "register_splits",
    "shard_chunk_rows",
    "softmax",
    "split_list",
    "trained_splits",
    "weak_class_ids",
    "with_store_holdout",
    "write_output",
    "write_sharded",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
