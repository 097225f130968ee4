"""Replacing a prediction never loses it (issue 18, item 1), and a refused write leaves no lock
(item 21).

A replace writes the new version to a hidden staged group and swaps it in only once it is
complete and checked (``ensemble_engine/staging.py``). A refused new version (NaN, beyond
float16) leaves the whole folder byte for byte as it was; a process killed while writing the new
version, or between the two renames of the swap, leaves the old or the new version whole, and
the next write of that prediction finishes or undoes what it left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import snapshot
from test_kill import kill_when, refuse_writes

from ensemble_engine.errors import StoreError
from ensemble_engine.store import open_store

N, K = 50, 10


def make_store(path: Path, n: int = N, k: int = K) -> np.ndarray:
    """A store with split val and prediction m1/val; returns m1's scores as stored."""
    st = open_store(path, "w")
    st.set_classes([f"c{i}" for i in range(k)])
    st.add_split("val", [f"v{i:06d}" for i in range(n)], np.arange(n) % k)
    scores = np.random.default_rng(0).normal(size=(n, k)).astype(np.float32)
    st.write_prediction("m1", "val", kind="logits", scores=scores)
    return scores.astype(np.float16)


def hidden(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "predictions" / "m1").iterdir() if p.name[0] == ".")


def one_line_exit_2(res, *parts: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for part in parts:
        assert part in lines[0], lines[0]


def nan_at_7_1() -> np.ndarray:
    a = np.zeros((N, K), np.float32)
    a[7, 1] = np.nan
    return a


REFUSED = {
    "NaN": (nan_at_7_1, "1 rows hold NaN or Inf scores"),
    "beyond float16": (lambda: np.full((N, K), 70000.0, np.float32), "beyond float16's range"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_force_import_leaves_the_old_prediction_byte_for_byte(tmp_path, run_cli, case):
    store = tmp_path / "s.zarr"
    old = make_store(store)
    make, fault = REFUSED[case]
    np.save(tmp_path / "x.npy", make())
    before = snapshot(tmp_path)
    res = run_cli("import", store, tmp_path / "x.npy", "--split", "val", "--id", "m1", "--force")
    one_line_exit_2(res, fault)
    assert snapshot(tmp_path) == before  # the old m1/val, no staging, no lock file
    np.testing.assert_array_equal(open_store(store, "r").read("m1", "val", dtype="stored"), old)


@pytest.mark.parametrize("bad", [np.nan, 70000.0], ids=["NaN", "beyond float16"])
def test_a_diverged_streaming_replace_keeps_the_old_prediction(tmp_path, bad):
    """What ``ee produce --force`` does when its run diverges: the writer refuses a bad block
    after good ones were written; the old prediction is untouched."""
    store = tmp_path / "s.zarr"
    old = make_store(store, n=3000)
    before = snapshot(tmp_path)
    st = open_store(store, "a")
    good = np.ones((1000, K), np.float32)
    with pytest.raises(StoreError, match="nothing was written"):
        with st.prediction_writer("m1", "val", kind="logits", replace=True, chunk_rows=256) as w:
            w.write(good)
            w.write(good)
            w.write(np.full((1000, K), bad, np.float32))
    assert snapshot(tmp_path) == before
    np.testing.assert_array_equal(st.read("m1", "val", dtype="stored"), old)


def test_a_replace_publishes_the_new_version_and_leaves_no_staging(tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    make_store(store)
    new = np.random.default_rng(5).normal(size=(N, K)).astype(np.float32)
    np.save(tmp_path / "x.npy", new)
    res = run_cli("import", store, tmp_path / "x.npy", "--split", "val", "--id", "m1", "--force")
    assert res.exit_code == 0, res.output
    got = open_store(store, "r").read("m1", "val")
    np.testing.assert_array_equal(got, new.astype(np.float16).astype(np.float32))
    assert hidden(store) == []
    assert run_cli("validate", store).stderr == ""


# --- what a killed process leaves, and the next write's recovery ------------------------------


def staged_copy(store: Path, scores: np.ndarray, complete: bool) -> None:
    """A staged copy of m1/val holding ``scores``, as a killed replace would leave it."""
    other = store.parent / "other.zarr"
    st = open_store(other, "w")
    st.set_classes([f"c{i}" for i in range(K)])
    st.add_split("val", [f"v{i:06d}" for i in range(N)], np.arange(N) % K)
    st.write_prediction("m1", "val", kind="logits", scores=scores)
    target = store / "predictions/m1/.val.staged"
    shutil.copytree(other / "predictions/m1/val", target)
    if not complete:
        meta = json.loads((target / "zarr.json").read_text())
        meta["attributes"]["complete"] = False
        (target / "zarr.json").write_text(json.dumps(meta))


NEW = np.full((N, K), 2.0, np.float16)
STATES = {
    # what is on disk -> (m1/val shown before recovery, m1/val after it)
    "complete staged copy beside the old version": ("old", "new"),
    "unfinished staged copy beside the old version": ("old", "old"),
    "old version set aside, complete staged copy": (None, "new"),
    "old version set aside, no staged copy": (None, "old"),
}


def leave(store: Path, state: str) -> None:
    if "complete staged" in state:
        staged_copy(store, NEW, complete=True)
    if "unfinished staged" in state:
        staged_copy(store, NEW, complete=False)
    if "set aside" in state:
        os.rename(store / "predictions/m1/val", store / "predictions/m1/.val.aside")


@pytest.mark.parametrize("state", list(STATES))
def test_leftovers_are_hidden_then_recovered_by_the_next_write(tmp_path, run_cli, state):
    store = tmp_path / "s.zarr"
    old = make_store(store)
    leave(store, state)
    shown, after = STATES[state]
    st = open_store(store, "r")
    listed = [p.id for p in st.list()]
    assert listed == ([] if shown is None else ["m1/val"])
    if shown == "old":
        np.testing.assert_array_equal(st.read("m1", "val", dtype="stored"), old)
    res = run_cli("validate", store)
    assert res.exit_code == 0, res.output
    assert "warning: predictions/m1/.val." in res.stderr and "next write of m1/val" in res.stderr

    # the next write of m1/val (here one refused as existing) recovers first
    with pytest.raises(StoreError, match="already exists"):
        open_store(store, "a").write_prediction("m1", "val", kind="logits", scores=NEW)
    want = {"old": old, "new": NEW}[after]
    np.testing.assert_array_equal(open_store(store, "r").read("m1", "val", dtype="stored"), want)
    assert hidden(store) == []
    assert run_cli("validate", store).stderr == ""


CRASH_IN_SWAP = """\
import os, sys
import numpy as np
from ensemble_engine.store import open_store

real, renames = os.rename, []

def rename(src, dst):  # the process dies between the swap's two renames
    renames.append(dst)
    if len(renames) == 2:
        os._exit(9)
    real(src, dst)

os.rename = rename
st = open_store(sys.argv[1], "a")
st.write_prediction("m1", "val", kind="logits", scores=np.full((50, 10), 2.0), replace=True)
"""


def test_a_process_dying_between_the_two_renames_loses_nothing(tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    make_store(store)
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_SWAP, str(store)], timeout=120)
    assert proc.returncode == 9
    assert hidden(store) == [".val.aside", ".val.staged"]  # it died mid-swap
    res = run_cli("ls", store, "--json")
    assert json.loads(res.stdout)["predictions"] == []  # hidden, not half shown
    assert run_cli("validate", store).exit_code == 0
    # the new version was complete and checked: the next write of m1/val rolls it forward
    np.save(tmp_path / "x.npy", np.zeros((N, K), np.float32))
    res = run_cli("import", store, tmp_path / "x.npy", "--split", "val", "--id", "m1")
    one_line_exit_2(res, "m1/val already exists")
    np.testing.assert_array_equal(open_store(store, "r").read("m1", "val", dtype="stored"), NEW)
    assert hidden(store) == []


@pytest.mark.slow
def test_kill_9_during_import_force_keeps_the_old_version(tmp_path, run_cli):
    store = tmp_path / "ee.zarr"
    n, k = 120_000, 100
    st = open_store(store, "w")
    st.set_classes([f"c{i:03d}" for i in range(k)])
    st.add_split("big", [f"b{i:06d}" for i in range(n)], np.arange(n) % k)
    old = np.random.default_rng(1).normal(0, 1, (n, k)).astype(np.float32)
    st.write_prediction("imp", "big", kind="logits", scores=old)
    before = snapshot(store / "predictions/imp/big")
    new = np.random.default_rng(2).normal(0, 1, (n, k)).astype(np.float32)
    np.save(tmp_path / "big.npy", new)
    args = ["import", str(store), str(tmp_path / "big.npy"), "--split", "big", "--id", "imp"]
    staged = store / "predictions/imp/.big.staged/scores/c"

    def writing_the_new_version() -> bool:
        return staged.is_dir() and sum(1 for p in staged.glob("*/*") if p.is_file()) >= 2

    kill_when([*args, "--force"], writing_the_new_version)
    assert snapshot(store / "predictions/imp/big") == before  # the old version, byte for byte
    res = run_cli("validate", store)
    assert res.exit_code == 0 and "interrupted replace of imp/big" in res.stderr, res.output
    listed = json.loads(run_cli("ls", store, "--json").stdout)["predictions"]
    assert [p["id"] for p in listed] == ["imp/big"]
    np.testing.assert_array_equal(
        open_store(store, "r").read("imp", "big"), old.astype(np.float16).astype(np.float32)
    )

    res = run_cli(*args, "--force")  # the killed process's staging is cleared, the lock broken
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(
        open_store(store, "r").read("imp", "big"), new.astype(np.float16).astype(np.float32)
    )
    assert not (store / "predictions/imp/.big.staged").exists()
    assert run_cli("validate", store).stderr == ""


# --- refused writes on a read-only store leave no lock (item 21) ------------------------------


def locks(store: Path) -> list[str]:
    folder = store.parent / f".{store.name}.locks"
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def test_a_store_opened_read_only_refuses_a_write_without_a_lock(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    with pytest.raises(StoreError, match="open read-only"):
        open_store(store, "r").write_prediction("m2", "val", kind="logits", scores=NEW)
    assert locks(store) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_file_system_refuses_an_import_without_a_lock(
    tmp_path, run_cli, monkeypatch, code
):
    store = tmp_path / "s.zarr"
    make_store(store)
    np.save(tmp_path / "x.npy", np.zeros((N, K), np.float32))
    before = snapshot(tmp_path)
    for force in ([], ["--force"]):
        for name in ("m1", "m2"):
            refused = refuse_writes(monkeypatch, code, lambda path, _: "/s.zarr/" in path)
            args = ("import", store, tmp_path / "x.npy", "--split", "val", "--id", name, *force)
            res = run_cli(*args)
            monkeypatch.undo()
            if name == "m1" and not force:
                one_line_exit_2(res, "already exists")
                continue
            one_line_exit_2(res, os.strerror(code))
            assert refused
            assert locks(store) == []
            assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod a-w folder anyway")
def test_a_chmod_read_only_store_refuses_an_import_without_a_lock(tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    make_store(store)
    np.save(tmp_path / "x.npy", np.zeros((N, K), np.float32))
    folders = [store, *(p for p in store.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        res = run_cli("import", store, tmp_path / "x.npy", "--split", "val", "--id", "m2")
        one_line_exit_2(res, "Permission denied")
        assert locks(store) == []
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_workers_of_a_parallel_combine_write_into_the_staged_copy(tmp_path, run_cli):
    """A re-run ``ee combine --workers 2 --force`` replaces node outputs through staging."""
    store = tmp_path / "s.zarr"
    n, k = 6000, 200  # more rows than one block (2621 rows of 200 float32): workers write
    st = open_store(store, "w")
    st.set_classes([f"c{i}" for i in range(k)])
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i}" for i in range(n)], rng.integers(0, k, n))
    for m in range(2):
        st.write_prediction(f"m{m}", "val", kind="logits", scores=rng.normal(size=(n, k)))
    graph = tmp_path / "g.yaml"
    graph.write_text(
        textwrap.dedent("""\
        version: 1
        fit: val
        apply: [val]
        nodes:
          soft: {combiner: soft_vote, inputs: ["m*"]}
        output: soft
        """)
    )
    first = run_cli("combine", graph, "--store", store, "--workers", "2")
    assert first.exit_code == 0, first.output
    want = open_store(store, "r").read("soft", "val")
    again = run_cli("combine", graph, "--store", store, "--workers", "2", "--force")
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(open_store(store, "r").read("soft", "val"), want)
    assert not any(p.name.startswith(".") for p in (store / "predictions/soft").iterdir())
    assert run_cli("validate", store, "--deep").exit_code == 0


def test_delete_clears_a_killed_replace_so_it_never_comes_back(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    staged_copy(store, NEW, complete=True)
    st = open_store(store, "a")
    st.delete("m1", "val")
    assert not (store / "predictions/m1").exists() and locks(store) == []
    st.write_prediction("m1", "val", kind="logits", scores=np.zeros((N, K)))  # a fresh write
    np.testing.assert_array_equal(st.read("m1", "val"), np.zeros((N, K), np.float32))
