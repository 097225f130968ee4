"""Crashes mid-write: ``kill -9`` during ``ee combine`` and ``ee import``, a full disk, no access.

After a kill the store must still validate, ``ee ls`` must not show the half-written prediction
(though its group is on disk, ``complete: false``), the killed process's lock must be broken by
the next run without waiting, and re-running the command must give exactly what an
uninterrupted run gives. A write refused by the disk (ENOSPC) or the file system (EACCES, EROFS)
is one line on stderr with exit code 2 and leaves the store valid with nothing half-visible.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local

from ensemble_engine.store import open_store

N, K, INPUTS = 20000, 100, 6
GRAPH = """\
version: 1
fit: val
apply: [val, test]
nodes:
  soft:
    combiner: soft_vote
    inputs: ["m*"]
    params: {weights: softmax_score}
  hard:
    combiner: hard_vote
    inputs: [soft, "m*"]
output: hard
"""
OUTPUTS = [(node, split) for node in ("soft", "hard") for split in ("val", "test")]


def build_store(path: Path, n: int, inputs: int, k: int = K) -> None:
    """Labelled val, test; ``inputs`` logits predictions a little better than chance."""
    st = open_store(path, "w")
    st.set_classes([f"c{i:03d}" for i in range(k)])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    st.add_split("val", [f"v{i:06d}" for i in range(n)], labels)
    st.add_split("test", [f"t{i:06d}" for i in range(n)], labels[::-1])
    meta = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}
    for m in range(inputs):
        for split in ("val", "test"):
            y = st.split(split).labels
            scores = rng.normal(0, 1, (n, k)).astype(np.float32)
            scores[np.arange(n), y] += 1.0 + 0.2 * m
            st.write_prediction(f"m{m}", split, kind="logits", scores=scores, meta=meta)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def partial(store: Path, pred: str, min_chunks: int = 0) -> bool:
    """Whether prediction ``pred`` (NAME/SPLIT) is on disk, unfinished, with some chunks."""
    folder = store / "predictions" / pred
    try:
        attrs = json.loads((folder / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, ValueError, KeyError):
        return False
    if attrs.get("complete") is not False:
        return False
    return min_chunks == 0 or sum(1 for p in folder.glob("*/c/**/*") if p.is_file()) >= min_chunks


def unfinished(store: Path) -> list[str]:
    """Prediction ids whose group is on disk without ``complete: true``."""
    out = []
    for meta in (store / "predictions").glob("*/*/zarr.json"):
        if json.loads(meta.read_text())["attributes"].get("complete") is not True:
            out.append(f"{meta.parent.parent.name}/{meta.parent.name}")
    return out


def locks_of(store: Path, pid: int) -> list[str]:
    folder = store.parent / f".{store.name}.locks"
    return sorted(
        p.name for p in folder.glob("*.lock") if json.loads(p.read_text()).get("pid") == pid
    )


def kill_when(
    args: list[str], ready: Callable[[], bool], timeout: float = 120, tag: str = ""
) -> int:
    """Run ``ee ARGS`` in a subprocess, SIGKILL it once ``ready()``; returns its pid.

    ``tag`` goes into the environment (``EE_TEST_TAG``), which child processes inherit.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "ensemble_engine", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EE_TEST_TAG": tag},
    )
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"ee {args[0]} ended (rc {proc.returncode}) before the kill point: "
                f"{proc.stderr.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point never came")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return proc.pid


def after_the_kill_the_store_is_clean(run_cli, store: Path, pid: int) -> list[str]:
    """validate passes and ls hides every unfinished prediction; returns those."""
    res = run_cli("validate", store)
    assert res.exit_code == 0, res.output
    res = run_cli("ls", store, "--json")
    assert res.exit_code == 0, res.output
    listed = {p["id"] for p in json.loads(res.stdout)["predictions"]}
    left = unfinished(store)
    assert not listed & set(left), (listed, left)
    return left


# --- combine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "base.zarr"
    build_store(path, N, INPUTS)
    (path.parent / "graph.yaml").write_text(GRAPH)
    return path


@pytest.fixture(scope="module")
def reference(big, tmp_path_factory) -> dict[tuple[str, str], np.ndarray]:
    """Node outputs of an uninterrupted run."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    shutil.copytree(big, path)
    res = CliRunner().invoke(
        build_cli(), ["combine", str(big.parent / "graph.yaml"), "--store", str(path)]
    )
    assert res.exit_code == 0, res.output
    st = open_store(path, "r")
    return {(node, split): st.read(node, split) for node, split in OUTPUTS}


KILL_POINTS = {
    "first node, its output just created": lambda s: partial(s, "soft/val"),
    "first node, some rows written": lambda s: partial(s, "soft/val", min_chunks=2),
    "second node, on the second split": lambda s: partial(s, "hard/test"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_mid_node_then_rerun_equals_an_uninterrupted_run(
    big, reference, tmp_path, run_cli, point
):
    store = tmp_path / "ee.zarr"
    shutil.copytree(big, store)
    graph = big.parent / "graph.yaml"
    pid = kill_when(
        ["combine", str(graph), "--store", str(store)], lambda: KILL_POINTS[point](store)
    )
    left = after_the_kill_the_store_is_clean(run_cli, store, pid)
    assert left, "the kill should leave an unfinished node output on disk"
    assert locks_of(store, pid) == [f"{left[0].replace('/', '--')}.lock"]  # the writer's lock

    started = time.monotonic()
    res = run_cli("combine", graph, "--store", store, "--json")
    assert res.exit_code == 0, res.output
    assert "waiting for" not in res.stderr  # the dead process's lock was broken, not waited on
    assert time.monotonic() - started < 120
    assert locks_of(store, pid) == [] and unfinished(store) == []
    st = open_store(store, "r")
    for node, split in OUTPUTS:
        np.testing.assert_array_equal(st.read(node, split), reference[node, split])
    assert run_cli("validate", store).exit_code == 0


@pytest.mark.slow
def test_kill_9_after_a_delay_then_rerun_equals_an_uninterrupted_run(
    big, reference, tmp_path, run_cli
):
    store = tmp_path / "ee.zarr"
    shutil.copytree(big, store)
    graph = big.parent / "graph.yaml"
    start = time.monotonic()
    pid = kill_when(
        ["combine", str(graph), "--store", str(store)],
        lambda: time.monotonic() - start > 1.5 or partial(store, "hard/val"),
    )
    after_the_kill_the_store_is_clean(run_cli, store, pid)
    res = run_cli("combine", graph, "--store", store)
    assert res.exit_code == 0, res.output
    st = open_store(store, "r")
    for node, split in OUTPUTS:
        np.testing.assert_array_equal(st.read(node, split), reference[node, split])


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment holds ``EE_TEST_TAG=tag`` (this test's processes only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"EE_TEST_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_kill_9_of_a_parallel_combine_then_rerun(big, reference, tmp_path, run_cli):
    store = tmp_path / "ee.zarr"
    shutil.copytree(big, store)
    graph = big.parent / "graph.yaml"
    tag = f"kill-{os.getpid()}-{time.monotonic_ns()}"
    args = ["combine", str(graph), "--store", str(store), "--workers", "2"]
    pid = kill_when(args, lambda: partial(store, "soft/test", min_chunks=1), tag=tag)
    deadline = time.monotonic() + 5
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.1)  # workers whose parent is gone should stop on their own
    survivors = tagged_processes(tag)
    for orphan in survivors:
        os.kill(orphan, signal.SIGKILL)

    assert after_the_kill_the_store_is_clean(run_cli, store, pid) == ["soft/test"]
    res = run_cli("combine", graph, "--store", store, "--workers", "2")
    assert res.exit_code == 0, res.output
    st = open_store(store, "r")
    for node, split in OUTPUTS:
        np.testing.assert_array_equal(st.read(node, split), reference[node, split])
    assert survivors == [], "worker processes outlived their killed parent"


# --- import -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_import_then_reimport(tmp_path, run_cli):
    store = tmp_path / "ee.zarr"
    n = 120_000
    st = open_store(store, "w")
    st.set_classes([f"c{i:03d}" for i in range(K)])
    st.add_split("big", [f"b{i:06d}" for i in range(n)], np.arange(n) % K)
    scores = np.random.default_rng(1).normal(0, 1, (n, K)).astype(np.float32)
    np.save(tmp_path / "big.npy", scores)
    args = ["import", str(store), str(tmp_path / "big.npy"), "--split", "big", "--id", "imp"]
    pid = kill_when(args, lambda: partial(store, "imp/big", min_chunks=2))
    assert after_the_kill_the_store_is_clean(run_cli, store, pid) == ["imp/big"]
    assert locks_of(store, pid) == ["imp--big.lock"]

    res = run_cli(*args)  # no --force: an unfinished write is not a prediction to protect
    assert res.exit_code == 0, res.output
    assert locks_of(store, pid) == [] and unfinished(store) == []
    expected = scores.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(open_store(store, "r").read("imp", "big"), expected)


# --- the disk says no ---------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "ee.zarr"
    build_store(path, 300, 3, k=5)
    (tmp_path / "graph.yaml").write_text(GRAPH)
    np.save(tmp_path / "x.npy", np.zeros((300, 5), np.float32))
    return path


def refuse_writes(monkeypatch, code: int, when: Callable[[str, bytes], bool]) -> list[str]:
    """Make file writes into a store raise OSError(code) where ``when(path, data)``.

    Writes reach the disk two ways: zarr's LocalStore (metadata, and chunks zarr writes), whose
    writes all meet in ``_put``; and ee's own chunk files, opened with ``open(path, "wb")``.
    Both are wrapped; the returned list names every refused write, so a test can check that
    the fault really happened.
    """
    real_put, real_open = zarr.storage._local._put, builtins.open
    refused: list[str] = []

    def refuse(path: object, data: bytes) -> None:
        if when(Path(str(path)).as_posix(), data):
            refused.append(str(path))
            raise OSError(code, os.strerror(code), str(path))

    def put(path, value, exclusive=False):
        refuse(path, value.to_bytes())
        return real_put(path, value, exclusive=exclusive)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and ("w" in mode or "a" in mode):
            refuse(file, b"")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(zarr.storage._local, "_put", put)
    monkeypatch.setattr(builtins, "open", open_)
    return refused


def one_line(res, *parts: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    # blank lines are not counted: combine's progress display ends with a newline on stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for part in parts:
        assert part in lines[0], lines[0]


def test_disk_full_mid_import_leaves_nothing(small, run_cli, monkeypatch):
    before = snapshot(small)
    refused = refuse_writes(monkeypatch, errno.ENOSPC, lambda path, _: "/x/val/scores/c/" in path)
    res = run_cli("import", small, small.parent / "x.npy", "--split", "val", "--id", "x")
    one_line(res, "No space left on device", "free some space and run the command again")
    assert refused
    monkeypatch.undo()
    assert snapshot(small) == before
    assert run_cli("validate", small).exit_code == 0
    assert locks_of(small, os.getpid()) == []


def test_read_only_store_refuses_import_in_one_line(small, run_cli, monkeypatch):
    before = snapshot(small)
    refused = refuse_writes(monkeypatch, errno.EROFS, lambda path, _: "/ee.zarr/" in path)
    res = run_cli("import", small, small.parent / "x.npy", "--split", "val", "--id", "x")
    one_line(res, "Read-only file system", "check the permissions there, or use another path")
    assert refused
    monkeypatch.undo()
    assert snapshot(small) == before


def test_no_access_when_publishing_a_node_hides_it_and_a_rerun_finishes(
    small, run_cli, monkeypatch
):
    graph = small.parent / "graph.yaml"
    ref = small.parent / "ref.zarr"
    shutil.copytree(small, ref)
    assert run_cli("combine", graph, "--store", ref).exit_code == 0

    def publishing_hard_test(path: str, data: bytes) -> bool:
        return path.endswith("/predictions/hard/test/zarr.json") and b'"complete": true' in data

    refuse_writes(monkeypatch, errno.EACCES, publishing_hard_test)
    res = run_cli("combine", graph, "--store", small)
    one_line(res, "Permission denied", "predictions/hard/test/zarr.json")
    monkeypatch.undo()

    assert run_cli("validate", small).exit_code == 0
    listed = {p["id"] for p in json.loads(run_cli("ls", small, "--json").stdout)["predictions"]}
    assert "hard/test" not in listed and {"soft/val", "soft/test", "hard/val"} <= listed
    assert locks_of(small, os.getpid()) == []
    res = run_cli("combine", graph, "--store", small)
    assert res.exit_code == 0, res.output
    done, want = open_store(small, "r"), open_store(ref, "r")
    for node, split in OUTPUTS:
        np.testing.assert_array_equal(done.read(node, split), want.read(node, split))
