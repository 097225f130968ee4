"""Advisory locks that keep two writers off the same prediction (and off the store's metadata).

A lock is a small JSON file (pid, host, token, time) created beside the store, never inside it,
so plain zarr readers see nothing extra: ``<parent>/.<store name>.locks/<key>.lock``.

- Local paths: the file is created with ``O_CREAT | O_EXCL``, which is atomic. A lock whose
  process is gone (same host, pid no longer alive) is stale: it is renamed away (atomic, so two
  processes cannot both break it) and taken.
- fsspec URLs (object stores have no rename): the lock object is created exclusively where the
  store offers it (S3's conditional PUT, ``If-None-Match: *``, through fsspec's
  ``pipe_file(mode="create")``), then read back after ``settle`` seconds: the writer holds the
  lock only if its token is there. Where exclusive create is missing the read-back alone decides
  (last writer wins, losers see another token and wait). A remote lock is abandoned when it is
  older than ``stale_after`` seconds, or when its process (same host) is gone, or when it is
  unreadable (objects are written whole, so that is not a write in progress).

A writer that has to wait says so once, on stderr, naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StoreError

DEFAULT_TIMEOUT = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _busy() -> dict[str, Any]:
    """A holder not known yet: the lock object is being taken or broken right now."""
    return {"pid": "?", "host": "?", "time": time.time()}


def _read_remote(fs: Any, path: str) -> dict[str, Any] | None:
    """The lock object's record, None if there is none; unreadable records have no token."""
    try:
        record = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"pid": "?", "host": "?", "time": 0.0}
    return record if isinstance(record, dict) else {"pid": "?", "host": "?", "time": 0.0}


def _create_remote(fs: Any, path: str, data: bytes) -> None:
    """Create ``path`` only if it does not exist (atomic on S3); a plain put where unsupported."""
    try:
        fs.pipe_file(path, data, mode="create")
    except (TypeError, NotImplementedError):  # an fsspec or filesystem without exclusive create
        fs.pipe_file(path, data)


class StoreLock:
    """``with StoreLock(store_path, key):`` holds the lock named ``key`` for that store."""

    def __init__(
        self,
        store_path: str,
        key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        poll: float = 0.2,
        settle: float = 0.2,
        stale_after: float = 6 * 3600,
        on_wait: Callable[[str], None] | None = _say,
    ) -> None:
        self.store_path, self.key = str(store_path), key
        self.timeout, self.poll, self.settle, self.stale_after = timeout, poll, settle, stale_after
        self.on_wait = on_wait
        self.token = uuid.uuid4().hex
        self.remote = "://" in self.store_path and not self.store_path.startswith("file://")
        self.held = False

    # --- where --------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        base = self.store_path.rstrip("/")
        if self.remote:
            return f"{base}.locks/{self.key}.lock"
        local = Path(base.removeprefix("file://"))
        return str(local.parent / f".{local.name}.locks" / f"{self.key}.lock")

    def _record(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "token": self.token,
                "time": time.time(),
            }
        ).encode()

    # --- acquire / release ----------------------------------------------------------------------

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            holder = self._try_remote() if self.remote else self._try_local()
            if holder is None:
                self.held = True
                return
            if not told and self.on_wait is not None:
                since = time.strftime("%H:%M:%S", time.localtime(holder.get("time", 0)))
                self.on_wait(
                    f"waiting for {self.key} in {self.store_path}: held by pid "
                    f"{holder.get('pid')} on {holder.get('host')} since {since}"
                )
                told = True
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.key} in {self.store_path} is locked by pid "
                    f"{holder.get('pid')} on {holder.get('host')}; if that process "
                    f"is gone, delete {self.path}"
                )
            time.sleep(self.poll)

    def _try_local(self) -> dict[str, Any] | None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = self._read_local(path)
            if holder is None:
                return {"pid": "?", "host": "?", "time": time.time()}  # being written right now
            if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
                try:  # stale: break it atomically, then try again at once
                    os.rename(path, path.with_name(f"{path.name}.stale-{self.token}"))
                    os.unlink(path.with_name(f"{path.name}.stale-{self.token}"))
                except FileNotFoundError:
                    pass
                return self._try_local()
            return holder
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._record())
        return None

    def holder(self) -> dict[str, Any] | None:
        """Who holds this lock of a local store (``pid``, ``host``, ``time``), or None."""
        return self._read_local(Path(self.path))

    @staticmethod
    def _read_local(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def _try_remote(self) -> dict[str, Any] | None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.path)
        holder = _read_remote(fs, path)
        if holder is not None:
            if not self._abandoned(holder):
                return holder
            if _read_remote(fs, path) == holder:  # still that one: break it; create decides
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)
        try:
            _create_remote(fs, path, self._record())
        except FileExistsError:  # another writer created it since the read
            return _read_remote(fs, path) or _busy()
        time.sleep(self.settle)
        holder = _read_remote(fs, path)
        if holder is None:  # broken by a process that took ours for abandoned: try again
            return _busy()
        return None if holder.get("token") == self.token else holder

    def _abandoned(self, holder: dict[str, Any]) -> bool:
        if holder.get("token") is None or time.time() - holder.get("time", 0) > self.stale_after:
            return True
        pid = holder.get("pid")
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and not _pid_alive(pid)
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.remote:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.path)
            try:
                if json.loads(fs.cat_file(path)).get("token") == self.token:
                    fs.rm_file(path)
            except (FileNotFoundError, ValueError):
                pass
            return
        path = Path(self.path)
        holder = self._read_local(path)
        if holder is not None and holder.get("token") == self.token:
            path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
