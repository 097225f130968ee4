"""Where a store lives and how its root group is opened: local paths and fsspec URLs.

``open_store`` (in ``store.py``) wraps ``open_root`` in a ``PredictionStore``; everything about
paths, URLs, filesystem drivers, existence and the format version is decided here, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from .errors import FormatVersionError, StoreError
from .records import FORMAT, VERSION

# what zarr raises when "w-" finds a node that another process created since ``_exists``
_CREATED_MEANWHILE = tuple(
    e
    for e in (
        getattr(zarr.errors, "ContainsGroupError", None),
        getattr(zarr.errors, "ContainsArrayError", None),
    )
    if e is not None
)


def store_location(path: str | Path) -> str:
    """The store's location as ``open_store`` uses it: a local path or an fsspec URL.

    ``file://`` URLs become paths, so a local store behaves the same however it is named
    (atomic local locks, plain existence checks); a URL's trailing slash is dropped, so one store
    has one name (its locks live beside it under that name).
    """
    spath = str(path)
    if spath.startswith("file://"):
        return spath.removeprefix("file://") or "."
    if "://" in spath:
        _filesystem(spath)  # an unknown protocol or a missing driver is a clear error here
        return spath.rstrip("/")
    return spath


def open_root(path: str | Path, mode: str) -> tuple[zarr.Group, str]:
    """The store's root group and location, opened (``r``, ``a``) or created (``a``, ``w``).

    ``a`` never overwrites: it creates a store only where none exists. A new store gets its
    ``ee`` format attrs here; an existing one has its format version checked.
    """
    if mode not in ("r", "a", "w"):
        raise StoreError(f"unknown store mode {mode!r}; use r, a or w")
    spath = store_location(path)
    is_url = "://" in spath
    if not is_url and Path(spath).exists() and not Path(spath).is_dir():
        raise StoreError(f"{spath} is a file, not a prediction store; choose another path")
    try:
        if mode == "r" or (mode == "a" and _exists(spath, is_url)):
            return _open_existing(spath, mode), spath
        # "w-" for ``a``: a store created meanwhile by another process is opened, not wiped.
        # The format attrs go into the creating write itself: a process that opens the store
        # a moment later never sees (nor rewrites) a root without them.
        attrs = {"ee": {"format": FORMAT, "version": VERSION}}
        group = zarr.open_group(store=spath, mode="w" if mode == "w" else "w-", attributes=attrs)
    except (FileExistsError, *_CREATED_MEANWHILE):
        return _open_existing(spath, mode), spath
    except OSError as exc:
        if not is_url:
            raise
        raise StoreError(
            f"cannot reach store {spath} ({type(exc).__name__}: {exc}); "
            "check the URL, that the bucket exists, and the credentials"
        ) from None
    return group, spath


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and in-filesystem path of ``url``, or a StoreError naming the fix."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        hint = "pip install 'ensemble-engine[s3]'" if url.startswith("s3") else "install it"
        raise StoreError(f"store URL {url} needs a filesystem driver ({exc}); {hint}") from None
    except ValueError as exc:
        raise StoreError(
            f"store URL {url}: {exc}; use a path or an fsspec URL such as s3://bucket/ee.zarr"
        ) from None


def _open_existing(spath: str, mode: str) -> zarr.Group:
    try:
        group = zarr.open_group(store=spath, mode="r" if mode == "r" else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(
            f"no prediction store at {spath}; create one with "
            "`ee store init STORE --data DIR` or `ee produce`"
        ) from None
    except ValueError as exc:  # zarr.json that is not JSON (or not UTF-8)
        raise StoreError(
            f"store {spath}: its root metadata (zarr.json) is damaged ({type(exc).__name__}); "
            "see `ee validate STORE`, or restore it from a copy"
        ) from None
    check_version(group, spath)
    return group


def store_exists(path: str | Path) -> bool:
    """Whether a prediction store is at ``path`` (a path or URL); a file there is an error."""
    spath = store_location(path)
    is_url = "://" in spath
    if not is_url and Path(spath).exists() and not Path(spath).is_dir():
        raise StoreError(f"{spath} is a file, not a prediction store; choose another path")
    return _exists(spath, is_url)


def _exists(spath: str, is_url: bool) -> bool:
    """Whether a zarr group is at ``spath``; a remote error is raised, never read as "absent"."""
    if not is_url:
        return (Path(spath) / "zarr.json").exists()
    fs, root = _filesystem(spath)
    fs.invalidate_cache(root)  # another process may have created it since this one listed
    return bool(fs.exists(f"{root}/zarr.json"))


def check_version(group: zarr.Group, spath: str) -> None:
    """The root is an ee store of a format version this code reads, or a one-line error."""
    info = group.attrs.get("ee")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise StoreError(
            f"{spath} is a zarr group but not an ee prediction store "
            "(root attrs lack ee.format); point at a store written by ee"
        )
    version = info.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(
            f"store {spath} has an invalid format version {version!r} in its root attrs; "
            "it is damaged: re-create the store"
        )
    if version > VERSION:
        raise FormatVersionError(
            f"store {spath} uses format version {version}, newer than this ee reads ({VERSION}); "
            "upgrade ensemble-engine"
        )
