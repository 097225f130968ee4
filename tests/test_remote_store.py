"""Stores at fsspec URLs: the whole CLI against S3 (moto's server on loopback), locks on an
object store, ``file://`` URLs as paths, clear errors for what cannot be opened."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ensemble_engine.errors import StoreError
from ensemble_engine.graph import runner as graph_runner
from ensemble_engine.locks import StoreLock
from ensemble_engine.store import open_store

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "ee-test"
GRAPH = """\
version: 1
fit: val
apply: [test]
nodes:
  soft:
    combiner: soft_vote
    inputs: ["m-*"]
    params: {weights: softmax_score, temperature: 0.1}
  hard:
    combiner: hard_vote
    inputs: ["m-*"]
output: hard
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with one bucket; the AWS variables point every client at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    nothing = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",  # read by botocore, so by s3fs
            "AWS_CONFIG_FILE": str(nothing),
            "AWS_SHARED_CREDENTIALS_FILE": str(nothing),
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        for key, value in env.items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hard_vote(logits: list[np.ndarray]) -> np.ndarray:
    """Majority of top-1 labels; a tie goes to the tied class of highest mean probability."""
    votes = sum(np.eye(x.shape[1])[x.argmax(axis=1)] for x in logits)
    mean = sum(softmax(x) for x in logits) / len(logits)
    return np.where(votes == votes.max(axis=1, keepdims=True), mean, -np.inf).argmax(axis=1)


def exported(text: str) -> list[list[int]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Image IDs", "Predictions"]
    return [[int(c) for c in r[1].split()] for r in rows[1:]]


@pytest.mark.slow
def test_init_import_combine_export_on_s3(s3, digits_dir, tmp_path, run_cli, monkeypatch):
    url = f"s3://{BUCKET}/digits.zarr"
    result = run_cli("store", "init", url, "--data", digits_dir)
    assert result.exit_code == 0, result.output
    st = open_store(url, "r")
    labels = {split: st.split(split).labels for split in ("val", "test")}
    assert len(st.classes) == 10 and (labels["test"] >= 0).all()

    rng = np.random.default_rng(5)
    logits: dict[str, dict[str, np.ndarray]] = {}
    for model, noise in (("m-a", 1.5), ("m-b", 2.0), ("m-c", 2.5)):
        for split, y in labels.items():
            x = 3.0 * np.eye(10)[y] + rng.normal(0.0, noise, (len(y), 10))
            x = x.astype(np.float16).astype(np.float32)  # what the store keeps
            logits.setdefault(split, {})[model] = x
            np.save(tmp_path / f"{model}-{split}.npy", x)
            result = run_cli(
                "import", url, tmp_path / f"{model}-{split}.npy", "--split", split, "--id", model
            )
            assert result.exit_code == 0, result.output

    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH, "utf-8")
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 128)
    result = run_cli("combine", graph, "--store", url, "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    nodes = {n["id"]: n for n in json.loads(result.stdout)["nodes"]}
    assert set(nodes) == {"soft", "hard"}

    # soft_vote: softmax(top-1 on val / 0.1) weights over the three models, computed here
    top1 = {m: float((x.argmax(1) == labels["val"]).mean()) for m, x in logits["val"].items()}
    z = np.array(list(top1.values())) / 0.1
    weights = dict(zip(top1, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), strict=True))
    soft = sum(w * softmax(logits["test"][m]) for m, w in weights.items())
    result = run_cli("export", url, "soft/test", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert exported(result.stdout) == np.argsort(-soft, axis=1)[:, :3].tolist()
    assert nodes["soft"]["metrics"]["test"]["top1"] == (soft.argmax(1) == labels["test"]).mean()

    hard = hard_vote(list(logits["test"].values()))
    result = run_cli("export", url, "hard/test")
    assert result.exit_code == 0, result.output
    assert exported(result.stdout) == hard[:, None].tolist()

    result = run_cli("ls", url, "--json")
    assert result.exit_code == 0, result.output
    ids = {p["id"] for p in json.loads(result.stdout)["predictions"]}
    assert {"m-a/val", "m-c/test", "soft/val", "soft/test", "hard/test"} <= ids
    assert run_cli("validate", url).exit_code == 0
    assert s3.find(f"{BUCKET}/digits.zarr.locks") == []  # every lock released


def test_a_prediction_shows_only_once_complete_on_s3(s3):
    url = f"s3://{BUCKET}/complete.zarr"
    st = open_store(url, "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", ["x", "y"], [0, 2])
    with st.prediction_writer("m", "val", kind="probs") as writer:
        writer.write(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
        assert open_store(url, "r").list() == []  # rows are there, the marker is not
        held = StoreLock(url, "m--val", timeout=0.1, poll=0.05, settle=0.01, on_wait=None)
        with pytest.raises(StoreError, match="is locked by pid"):
            held.acquire()
    [pred] = open_store(url, "r").list()
    assert pred.id == "m/val" and pred.metrics["top1"] == 1.0
    meta = json.loads(s3.cat_file(f"{BUCKET}/complete.zarr/predictions/m/val/zarr.json"))
    assert meta["attributes"]["complete"] is True


def test_s3_locks_are_exclusive_and_abandoned_ones_are_taken(s3):
    url = f"s3://{BUCKET}/locks.zarr"
    a = StoreLock(url, "k", settle=0.01, on_wait=None)
    a.acquire()
    b = StoreLock(url, "k", timeout=0.2, poll=0.05, settle=0.01, on_wait=None)
    with pytest.raises(StoreError, match=f"is locked by pid {os.getpid()}"):
        b.acquire()
    a.release()
    b.acquire()  # free again
    b.release()
    assert s3.find(f"{BUCKET}/locks.zarr.locks") == []

    path = f"{BUCKET}/locks.zarr.locks/k.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for leftover in (
        json.dumps({"pid": dead.pid, "host": host, "token": "gone", "time": 9e99}),  # dead
        json.dumps({"pid": 1, "host": "elsewhere", "token": "old", "time": 0}),  # too old
        "{not json",
    ):
        s3.pipe_file(path, leftover.encode())
        taker = StoreLock(url, "k", timeout=1.0, poll=0.05, settle=0.01, on_wait=None)
        taker.acquire()
        assert json.loads(s3.cat_file(path))["token"] == taker.token
        taker.release()
    live = {"pid": 1, "host": "elsewhere", "token": "live", "time": 9e99}
    s3.pipe_file(path, json.dumps(live).encode())
    with pytest.raises(StoreError, match="locked by pid 1 on elsewhere"):
        StoreLock(url, "k", timeout=0.1, poll=0.05, settle=0.01, on_wait=None).acquire()


def test_file_urls_are_paths(tmp_path):
    path = tmp_path / "ee.zarr"
    st = open_store(f"file://{path}", "w")
    assert st.path == str(path)
    st.set_classes(["a", "b"])
    assert open_store(path, "r").classes == ["a", "b"]
    assert StoreLock(f"file://{path}", "meta").path == str(tmp_path / ".ee.zarr.locks/meta.lock")


def test_urls_that_cannot_be_opened_say_why(s3):
    with pytest.raises(StoreError, match="use a path or an fsspec URL"):
        open_store("nosuch://bucket/ee.zarr", "r")
    with pytest.raises(StoreError, match="no prediction store at s3://ee-test/absent.zarr"):
        open_store(f"s3://{BUCKET}/absent.zarr", "r")
    with pytest.raises(StoreError, match="cannot reach store .*bucket exists"):
        open_store("s3://no-such-bucket/ee.zarr", "a")


def test_open_a_keeps_an_existing_remote_store(s3):
    url = f"s3://{BUCKET}/kept.zarr/"  # a trailing slash names the same store
    open_store(url, "w").set_classes(["a", "b"])
    st = open_store(url, "a")
    assert st.path == f"s3://{BUCKET}/kept.zarr" and st.classes == ["a", "b"]


# --- replacing a prediction on an object store (no rename: roll forward by copying) -----------


def objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(prefix)}


def replace_store(url: str, n: int = 3000) -> tuple:
    st = open_store(url, "w")
    st.set_classes([f"c{i}" for i in range(5)])
    st.add_split("val", [f"v{i}" for i in range(n)], np.arange(n) % 5)
    old = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    with st.prediction_writer("m", "val", kind="logits", chunk_rows=256) as w:
        w.write(old)
    return st, old.astype(np.float16)


def test_a_refused_replace_on_s3_leaves_the_old_objects_byte_for_byte(s3):
    url = f"s3://{BUCKET}/replace.zarr"
    st, old = replace_store(url)
    before = objects(s3, f"{BUCKET}/replace.zarr")
    bad = np.ones((3000, 5), np.float32)
    bad[2900, 1] = np.nan  # refused in the last chunk, after the others were written
    with pytest.raises(StoreError, match="NaN or Inf"):
        with st.prediction_writer("m", "val", kind="logits", chunk_rows=512, replace=True) as w:
            w.write(bad)
    assert objects(s3, f"{BUCKET}/replace.zarr") == before
    assert objects(s3, f"{BUCKET}/replace.zarr.locks") == {}
    new = np.full((3000, 5), 3.0, np.float32)
    with st.prediction_writer("m", "val", kind="logits", chunk_rows=512, replace=True) as w:
        w.write(new)  # other chunks than the old version's: its extra objects are deleted
    after = objects(s3, f"{BUCKET}/replace.zarr/predictions/m")
    assert not any("/." in p for p in after) and len([p for p in after if "/c/" in p]) == 6
    np.testing.assert_array_equal(open_store(url, "r").read("m", "val"), new)


def test_an_interrupted_copy_on_s3_is_finished_by_the_next_write(s3, monkeypatch):
    from zarr.storage import FsspecStore

    from ensemble_engine import staging

    url = f"s3://{BUCKET}/interrupted.zarr"
    st, old = replace_store(url)
    real_set, real_copy, puts = FsspecStore.set, staging._copy_into_place, []

    async def failing_set(self, key, value, *args, **kwargs):
        if puts:  # copying into place: the connection drops after a few objects
            puts.append(key)
            if len(puts) > 4:
                raise OSError("connection reset by peer")
        return await real_set(self, key, value, *args, **kwargs)

    async def copy(store, staged, final, doc):
        puts.append("start")
        await real_copy(store, staged, final, doc)

    monkeypatch.setattr(FsspecStore, "set", failing_set)
    monkeypatch.setattr(staging, "_copy_into_place", copy)
    new = np.full((3000, 5), 3.0, np.float32)
    with pytest.raises(OSError, match="connection reset"):
        st.write_prediction("m", "val", kind="logits", scores=new, replace=True)
    monkeypatch.undo()
    assert open_store(url, "r").list() == []  # half copied: hidden, neither version shown
    assert objects(s3, f"{BUCKET}/interrupted.zarr.locks") == {}
    with pytest.raises(StoreError, match="already exists"):  # the next write rolls forward
        open_store(url, "a").write_prediction("m", "val", kind="logits", scores=new * 0)
    np.testing.assert_array_equal(open_store(url, "r").read("m", "val"), new)
    assert not any("/." in p for p in objects(s3, f"{BUCKET}/interrupted.zarr"))
