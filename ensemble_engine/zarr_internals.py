"""zarr's private names the store uses, imported here and nowhere else.

zarr documents ``zarr``, ``zarr.api``, ``zarr.storage``, ``zarr.codecs``, ``zarr.buffer`` and
``zarr.abc``; ``zarr.core`` and underscore names may change in any release. The few below buy
speed the public API cannot (one crossing into zarr's event loop instead of several, or none).
``tests/test_dependency_internals.py`` checks what ee relies on from each; if a zarr release
moves one, importing this module raises an ImportError naming the zarr version and this file.
"""

from __future__ import annotations

import importlib
from typing import Any

import zarr

MODULE = "ensemble_engine/zarr_internals.py"


def moved(name: str, how: str = "moved") -> str:
    """The message for a private name that zarr moved (or, with ``how``, changed)."""
    return f"zarr {zarr.__version__} {how} {name}: update {MODULE}"


def _private(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(moved(f"{module}.{name}")) from exc


# ``sync(coroutine)``: runs a coroutine on zarr's event-loop thread and returns its result. Used
# to run several awaits (lookups, listings, a staged copy) in one crossing of about a ms
# (store_root, chunks, validate, staging, local_nodes). No public alternative: each method of
# ``zarr.Group``/``zarr.Array`` crosses once, and a store's methods are coroutines bound to
# zarr's loop.
sync = _private("zarr.core.sync", "sync")

# The metadata classes that build and validate a group's and an array's ``zarr.json``
# (``to_buffer_dict``, ``from_dict``), from which ``local_nodes`` writes new nodes straight to a
# local folder and makes ``zarr.AsyncGroup``/``zarr.AsyncArray`` objects without reading them
# back. Public alternative: ``zarr.create_group``/``create_array`` (6 to 10 ms a prediction
# through the event loop instead of direct file writes).
GroupMetadata = _private("zarr.core.group", "GroupMetadata")
ArrayV3Metadata = _private("zarr.core.metadata.v3", "ArrayV3Metadata")

_private("zarr.storage._local", "_put")  # raises the ImportError above if it moved
_local = importlib.import_module("zarr.storage._local")


def atomic_put(path: Any, value: Any, exclusive: bool = False) -> int:
    """``zarr.storage._local._put``: the function ``LocalStore`` writes every file with
    (a temporary file, then a rename; ``exclusive``: fail with FileExistsError if ``path``
    exists). ``local_nodes`` writes ``zarr.json`` files with it, so they are written as zarr
    writes them. Looked up on each call, as ``LocalStore`` does (tests wrap it to inject
    faults). Public alternative: ``LocalStore.set`` (a crossing into the event loop per file)."""
    return _local._put(path, value, exclusive=exclusive)


def async_group(group: zarr.Group) -> zarr.AsyncGroup:
    """``group._async_group``: the ``zarr.AsyncGroup`` behind a ``zarr.Group``, whose coroutines
    ``sync`` runs in one crossing. Public alternative: none (``zarr.Array`` has
    ``async_array``; ``zarr.Group`` has no such property in zarr 3.1)."""
    return group._async_group
