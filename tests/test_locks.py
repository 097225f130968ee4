"""Advisory locks: a second writer waits and says so, stale locks are broken, nothing corrupts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ensemble_engine.errors import StoreError
from ensemble_engine.locks import StoreLock
from ensemble_engine.store import open_store

SLOW_WRITER = """
import sys, time, numpy as np
from ensemble_engine.store import open_store
st = open_store(sys.argv[1], "a")
with st.prediction_writer("m", "val", kind="logits", dtype="float32", chunk_rows=10) as w:
    print("writing", flush=True)
    for i in range(10):
        w.write(np.full((10, 3), float(sys.argv[2]), np.float32))
        time.sleep(0.1)
"""


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [f"x{i}" for i in range(100)], np.arange(100) % 3)
    return st


def test_second_writer_waits_says_so_and_both_land_intact(store):
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, store.path, "1"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout.readline().strip() == "writing"
    store_b = open_store(store.path, "a")
    lines: list[str] = []
    store_b.lock = lambda key: StoreLock(store_b.path, key, on_wait=lines.append)
    with pytest.raises(StoreError, match="already exists"):
        store_b.write_prediction("m", "val", kind="logits", scores=np.zeros((100, 3)))
    assert first.wait(timeout=60) == 0
    assert len(lines) == 1 and lines[0].startswith("waiting for m--val")
    assert f"held by pid {first.pid}" in lines[0]
    np.testing.assert_array_equal(open_store(store.path, "r").read("m", "val"), 1.0)
    # with replace, the second writer's complete result replaces the first's
    open_store(store.path, "a").write_prediction(
        "m", "val", kind="logits", scores=np.full((100, 3), 2.0), replace=True
    )
    np.testing.assert_array_equal(open_store(store.path, "r").read("m", "val"), 2.0)


def test_stale_lock_of_a_dead_process_is_broken(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = StoreLock(store.path, "m--val", on_wait=None)
    path = lock.path
    with open(path, "w") as fh:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "token": "x", "time": 0}, fh)
    start = time.monotonic()
    store.write_prediction("m", "val", kind="logits", scores=np.zeros((100, 3)))
    assert time.monotonic() - start < 5
    assert open_store(store.path, "r").exists("m", "val")


def test_live_lock_times_out_naming_the_file(store):
    held = StoreLock(store.path, "meta", on_wait=None)
    with held:
        waiting = StoreLock(store.path, "meta", timeout=0.3, poll=0.05, on_wait=None)
        with pytest.raises(StoreError, match="is locked by pid .* delete .*meta.lock"):
            waiting.acquire()
    with StoreLock(store.path, "meta", timeout=0.3, on_wait=None):
        pass  # released: free again


def test_remote_lock_on_an_object_store_url():
    url = "memory://locks-test/s.zarr"
    a = StoreLock(url, "k", settle=0.01, on_wait=None)
    a.acquire()
    b = StoreLock(url, "k", timeout=0.2, poll=0.05, settle=0.01, on_wait=None)
    with pytest.raises(StoreError, match="is locked"):
        b.acquire()
    a.release()
    b.acquire()
    b.release()
    old = StoreLock(url, "old", settle=0.01, stale_after=0.0, on_wait=None)
    old.acquire()  # abandoned: older than stale_after
    StoreLock(url, "old", settle=0.01, stale_after=0.0, timeout=0.5, on_wait=None).acquire()
