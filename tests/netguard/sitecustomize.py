"""Turns off internet sockets in every Python process started with this folder on PYTHONPATH.

Python imports ``sitecustomize`` at start-up, so processes spawned by the code under test (the
demo's training workers) are guarded too, which no in-process monkeypatch reaches. Each attempt
is appended to the file named by ``EE_TEST_NO_NETWORK`` and then refused with ``OSError``.
"""

from __future__ import annotations

import os
import socket

LOG = os.environ.get("EE_TEST_NO_NETWORK")


def _record(what: str) -> None:
    with open(LOG, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
        f.write(f"{os.getpid()} {what}\n")
    raise OSError(f"network access is disabled in this test ({what})")


def install() -> None:
    real = socket.socket

    class GuardedSocket(real):  # type: ignore[misc, valid-type]
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if family in (socket.AF_INET, socket.AF_INET6) or (family == -1 and fileno is None):
                _record(f"socket({family})")
            super().__init__(family, type, proto, fileno)

    def refuse(name: str):
        def guard(*args, **kwargs):
            _record(f"{name}{args[:1]}")

        return guard

    socket.socket = GuardedSocket  # type: ignore[misc]
    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        setattr(socket, name, refuse(name))


if LOG:
    install()
