"""Where a store lives and how its root group is opened: local paths and fsspec URLs.

``open_store`` (in ``store.py``) wraps ``open_root`` in a ``PredictionStore``; everything about
paths, URLs, filesystem drivers, existence and the format version is decided here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
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


# Set while a command of the ``ee`` app runs (``cli.EEGroup``): a location given on a command
# line must outlive the command, so a ``memory://`` store is refused there (the Python API and
# the tests keep it).
_COMMAND_LINE: ContextVar[bool] = ContextVar("ee_command_line", default=False)


@contextlib.contextmanager
def command_line_locations() -> Iterator[None]:
    """Within: store locations come from a command line (``memory://`` is refused)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def store_location(path: str | Path) -> str:
    """The store's location as ``open_store`` uses it: a local path or an fsspec URL.

    ``file://`` URLs become paths, so a local store behaves the same however it is named
    (atomic local locks, plain existence checks); a URL's trailing slash is dropped, so one store
    has one name (its locks live beside it under that name). A location without ``://`` is a
    path, whatever it holds (``a::b.zarr`` is a folder of that name, never fsspec's chained
    URL); a chained URL (``simplecache::s3://…``) is refused.
    """
    spath = str(path)
    if spath.startswith("file://"):
        return spath.removeprefix("file://") or "."
    if "://" in spath:
        if "::" in spath:
            raise StoreError(
                f"store URL {spath} chains filesystems with '::', which ee does not support; "
                "give one URL such as s3://bucket/ee.zarr, or a folder path"
            )
        if spath.startswith("memory://") and _COMMAND_LINE.get():
            raise StoreError(
                f"store {spath} lives in one process's memory and is gone when this command "
                "ends; give a folder path such as ee.zarr (or an s3:// URL)"
            )
        _filesystem(spath)  # an unknown protocol or a missing driver is a clear error here
        return spath.rstrip("/")
    return spath


def _zarr_store(spath: str, is_url: bool) -> str | Path:
    """What zarr opens: a URL as text, a path as a ``Path`` (zarr reads text with ``::`` in it
    as an fsspec URL)."""
    return spath if is_url else Path(spath)


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
        group = zarr.open_group(
            store=_zarr_store(spath, is_url), mode="w" if mode == "w" else "w-", attributes=attrs
        )
    except (FileExistsError, *_CREATED_MEANWHILE):
        return _open_existing(spath, mode), spath
    except StoreError:
        raise
    except Exception as exc:
        if not is_url:
            raise
        raise remote_error(spath, exc) from None
    return group, spath


# botocore's and aiohttp's errors by class name (neither package is a dependency of the core)
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_NO_CONNECTION = {"EndpointConnectionError", "ConnectionError", "ClientConnectorError"}
_REMOTE_MODULES = ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp", "gcsfs", "adlfs")


def remote_error(spath: str, exc: BaseException) -> BaseException:
    """What a remote filesystem raised while opening ``spath``, as one StoreError that names the
    fix: credentials, the connection, or the URL; anything else is returned as it is (a bug)."""
    names = {c.__name__ for c in type(exc).__mro__}
    module = type(exc).__module__ or ""
    if not isinstance(exc, OSError) and not module.startswith(_REMOTE_MODULES):
        return exc
    if names & _NO_CREDENTIALS:
        fix = (
            "set AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), "
            "and AWS_ENDPOINT_URL_S3 for an S3 server other than AWS"
        )
    elif names & _NO_CONNECTION or isinstance(exc, (ConnectionError, TimeoutError)):
        fix = "check the network and the endpoint (AWS_ENDPOINT_URL_S3 for a server other than AWS)"
    elif isinstance(exc, PermissionError) or "ClientError" in names:
        fix = "check the URL, that the bucket exists, and that the credentials may use it"
    else:
        fix = "check the URL, that the bucket exists, and the credentials"
    text = " ".join(str(exc).split())[:160]
    return StoreError(f"cannot reach store {spath} ({type(exc).__name__}: {text}); {fix}")


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
        group = zarr.open_group(
            store=_zarr_store(spath, "://" in spath), mode="r" if mode == "r" else "r+"
        )
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
    try:
        fs.invalidate_cache(root)  # another process may have created it since this one listed
        return bool(fs.exists(f"{root}/zarr.json"))
    except Exception as exc:
        raise remote_error(spath, exc) from None


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
