"""Replacing a prediction without ever losing it: the new version is written aside, then swapped in.

A replace (``--force``, a re-run combine node) writes the new version to a *staged* group beside
the old one, ``predictions/<name>/.<split>.staged``, a name no prediction can have (names start
with a letter or digit), which readers, ``ee ls`` and ``ee validate`` skip. A refused or failed
new version is deleted there and the old one is never touched. Only once the staged copy is
complete (``complete: true`` in its own attrs, after every check) is it published:

- local folder: rename the old group to ``.<split>.aside``, the staged one to ``<split>``, then
  delete the aside copy (two renames: readers see the old version, then for an instant none,
  then the new one);
- any other store (object stores have no rename): roll forward by copying. The old group's
  ``zarr.json`` becomes the new attrs with ``complete: false`` (readers now ignore it), its
  objects are replaced by the staged ones, the new ``zarr.json`` with ``complete: true`` is
  written last, then the staged copy is deleted, its ``zarr.json`` first.

The commit point is the staged copy's ``complete: true``. ``recover`` runs under the
prediction's lock before every write of it and applies one rule to what a killed process left:
a complete staged copy is published (rolled forward, the same steps again); an incomplete one is
deleted; an aside copy is restored only when the prediction itself is missing and there is no
complete staged copy, else deleted. Deleting a staged copy removes its ``zarr.json`` first, so
a half-deleted one is never taken for complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from typing import Any

import zarr
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from .zarr_internals import sync

STAGED, ASIDE = ".staged", ".aside"
_JSON = "zarr.json"
# Objects copied at once when rolling a replace forward on an object store (zarr's own default
# concurrency): each is a request whose latency the others hide.
_CONCURRENCY = 10


def final_path(name: str, split: str) -> str:
    return f"predictions/{name}/{split}"


def staged_path(name: str, split: str) -> str:
    return f"predictions/{name}/.{split}{STAGED}"


def aside_path(name: str, split: str) -> str:
    return f"predictions/{name}/.{split}{ASIDE}"


def leftover_of(member: str) -> str | None:
    """The split whose replace left the hidden member ``member`` of a name's group, else None."""
    for suffix in (STAGED, ASIDE):
        if member.startswith(".") and member.endswith(suffix) and len(member) > len(suffix) + 1:
            return member[1 : -len(suffix)]
    return None


def _local_root(root: zarr.Group) -> str | None:
    store = root.store_path.store
    if not isinstance(store, LocalStore):
        return None
    return os.path.join(str(store.root), root.store_path.path)


def _key(root: zarr.Group, path: str) -> str:
    base = root.store_path.path
    return f"{base}/{path}" if base else path


# --- local folders: renames -----------------------------------------------------------------


def _complete_folder(folder: str) -> bool:
    try:
        with open(os.path.join(folder, _JSON), "rb") as f:
            return json.load(f).get("attributes", {}).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def _discard_folder(folder: str) -> None:
    """Delete ``folder``, its ``zarr.json`` first (a half-deleted copy is never complete)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, _JSON))
    if os.path.isdir(folder):
        shutil.rmtree(folder)


def _publish_local(base: str, name: str, split: str) -> None:
    final, staged, aside = (
        os.path.join(base, p)
        for p in (final_path(name, split), staged_path(name, split), aside_path(name, split))
    )
    if os.path.isdir(final):
        if os.path.isdir(aside):
            _discard_folder(aside)  # an older aside copy: the prediction itself is there
        os.rename(final, aside)
    os.rename(staged, final)
    if os.path.isdir(aside):
        _discard_folder(aside)


def _recover_local(base: str, name: str, split: str) -> None:
    final, staged, aside = (
        os.path.join(base, p)
        for p in (final_path(name, split), staged_path(name, split), aside_path(name, split))
    )
    if _complete_folder(staged):
        _publish_local(base, name, split)
        return
    if os.path.isdir(staged):
        _discard_folder(staged)
    if os.path.isdir(aside):
        if os.path.isdir(final):
            _discard_folder(aside)
        else:
            os.rename(aside, final)


def _undo_local(base: str, name: str, split: str) -> None:
    """After a failed publish in this process: the old version back, the new one dropped."""
    final, staged, aside = (
        os.path.join(base, p)
        for p in (final_path(name, split), staged_path(name, split), aside_path(name, split))
    )
    if os.path.isdir(aside) and not os.path.isdir(final):
        os.rename(aside, final)
    if os.path.isdir(staged):
        _discard_folder(staged)


# --- other stores: roll forward by copying ----------------------------------------------------


async def _keys(store: Any, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


async def _get(store: Any, key: str) -> Any:
    return await store.get(key, prototype=default_buffer_prototype())


async def _complete_key(store: Any, key: str) -> tuple[bool, Any]:
    doc = await _get(store, key)
    if doc is None:
        return False, None
    try:
        attrs = json.loads(doc.to_bytes()).get("attributes", {})
    except (ValueError, AttributeError):
        return False, None
    return attrs.get("complete") is True, doc


async def _discard_prefix(store: Any, prefix: str) -> None:
    """Delete every key under ``prefix``, its ``zarr.json`` first."""
    for key in [prefix + _JSON, *await _keys(store, prefix)]:
        with contextlib.suppress(FileNotFoundError):
            await store.delete(key)


async def _copy_into_place(store: Any, staged: str, final: str, doc: Any) -> None:
    meta = json.loads(doc.to_bytes())
    meta["attributes"] = {**meta.get("attributes", {}), "complete": False}
    hidden = default_buffer_prototype().buffer.from_bytes(json.dumps(meta).encode())
    await store.set(final + _JSON, hidden)  # from here on readers ignore the prediction
    new = {k.removeprefix(staged) for k in await _keys(store, staged)} - {_JSON}
    extra = [k for k in await _keys(store, final) if k.removeprefix(final) not in new | {_JSON}]
    requests = asyncio.Semaphore(_CONCURRENCY)

    async def drop(key: str) -> None:  # an object of the old version the new one lacks
        async with requests:
            with contextlib.suppress(FileNotFoundError):
                await store.delete(key)

    async def copy(rel: str) -> None:
        async with requests:
            data = await _get(store, staged + rel)
            if data is not None:
                await store.set(final + rel, data)

    await _all([drop(k) for k in extra])
    await _all([copy(rel) for rel in sorted(new)])
    await store.set(final + _JSON, doc)  # complete: true, last, once every object is in place


async def _all(coroutines: list) -> None:
    """Run ``coroutines`` at once; on the first error cancel the rest before raising it, so no
    request of this replace is still running when the next writer recovers it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _recover_remote(store: Any, staged: str, final: str) -> None:
    complete, doc = await _complete_key(store, staged + _JSON)
    if complete:
        await _copy_into_place(store, staged, final, doc)
    if await _keys(store, staged):
        await _discard_prefix(store, staged)


# --- the operations a writer uses -------------------------------------------------------------


def recover(root: zarr.Group, name: str, split: str) -> None:
    """Finish or undo an interrupted replace of ``name/split`` (the caller holds its lock)."""
    base = _local_root(root)
    if base is not None:
        _recover_local(base, name, split)
        return
    store = root.store_path.store
    staged, final = _key(root, staged_path(name, split)), _key(root, final_path(name, split))
    sync(_recover_remote(store, staged + "/", final + "/"))


def publish(root: zarr.Group, name: str, split: str) -> None:
    """Swap the complete staged copy of ``name/split`` in for the prediction.

    If this fails in a local folder the old version is put back where it can be; on another
    store an interrupted copy is finished by the next write of the prediction (``recover``).
    """
    base = _local_root(root)
    if base is None:
        recover(root, name, split)  # the staged copy is complete: recovery rolls it forward
        return
    try:
        _publish_local(base, name, split)
    except BaseException:
        with contextlib.suppress(OSError):
            _undo_local(base, name, split)
        raise
