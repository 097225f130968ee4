"""Writing a command's output (``-o FILE``): whole or not at all, and never over a special file.

``write_output`` is what every ``-o`` of ``ee`` uses, and plugins should too:

- ``-`` writes to stdout.
- A new path or an existing regular file is written to a temporary file in the same folder,
  synced, and renamed over the path: a reader never sees half a file, and a failed write leaves
  the old file as it was (a replaced file keeps its permission bits).
- Anything else that exists (``/dev/full``, ``/dev/stdout``, a FIFO, a socket) is opened and
  written directly, never replaced: renaming over a device node or a FIFO would swap it for a
  regular file.
- A symlink stays a link: its target is written by the same rules (a regular or missing target
  through the temporary file in the target's folder, a special target directly).

Every failure (a missing folder, no space, ``ulimit -f``, a closed FIFO) is one ``OutputError``
naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

from .errors import EEError

__all__ = ["STDOUT", "OutputError", "is_stdout", "write_output"]

STDOUT = "-"


def is_stdout(path: str | os.PathLike[str] | None) -> bool:
    """Whether an ``-o`` value means stdout: left out (None) or ``-``."""
    return path is None or os.fspath(path) == STDOUT


class OutputError(EEError):
    """An output file (``-o``) could not be written; nothing else was changed."""


def write_output(path: str | os.PathLike[str], content: str | bytes, option: str = "-o") -> None:
    """Write ``content`` (text as UTF-8) to ``path`` (``-``: stdout) as described above.

    ``option`` names the command-line option in messages (``-o`` by default).
    """
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if os.fspath(path) == STDOUT:
        _write_stdout(data, option)
        return
    shown = os.fspath(path)
    target = Path(os.path.realpath(shown))  # a symlink is written through, never replaced
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _error(shown, exc, option) from None
    try:
        if mode is not None and stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if mode is None or stat.S_ISREG(mode):
            _replace(target, data, mode)
        else:
            _write_in_place(target, data)
    except OSError as exc:
        raise _error(shown, exc, option) from None


def _replace(target: Path, data: bytes, old_mode: int | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if old_mode is None:
            umask = os.umask(0)
            os.umask(umask)
            perms = 0o666 & ~umask  # mkstemp makes the file private; an output is not
        else:
            perms = stat.S_IMODE(old_mode)
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_in_place(target: Path, data: bytes) -> None:
    """A device, FIFO or socket: open it for writing (a FIFO waits for its reader) and write."""
    fd = os.open(target, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()


def _write_stdout(data: bytes, option: str) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    try:
        if stream is None:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
        else:
            sys.stdout.flush()  # what was printed before comes first
            stream.write(data)
            stream.flush()
    except OSError as exc:
        raise _error("stdout", exc, option) from None


def _error(shown: str, exc: OSError, option: str) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space, or choose a writable file with {option}"
    elif exc.errno == errno.EFBIG:
        fix = f"raise the file size limit (ulimit -f), or choose a writable file with {option}"
    else:
        fix = f"choose a writable file with {option}"
    return OutputError(f"cannot write {shown}: {reason}; {fix}")
