"""The prediction store, format v1: round trips, visibility, ids, alignment, plain-zarr reads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from ensemble_engine.combiner import OTHER
from ensemble_engine.errors import AlignmentError, FormatVersionError, StoreError
from ensemble_engine.store import open_store, split_fingerprint

CLASSES = ["c0", "c1", "c2", "c3"]


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i:03d}" for i in range(300)], rng.integers(0, 4, 300))
    st.add_split("test", [f"t{i:03d}" for i in range(200)])
    return st


def scores(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(CLASSES))).astype(np.float32) * 3


def test_round_trip_float32_is_exact(store):
    data = scores(300)
    store.write_prediction("m", "val", kind="logits", scores=data, dtype="float32")
    np.testing.assert_array_equal(store.read("m", "val"), data)
    assert store.group["predictions/m/val/scores"].dtype == np.float32


def test_float16_is_the_default_on_disk(store):
    data = scores(300)
    store.write_prediction("m", "val", kind="logits", scores=data)
    assert store.group["predictions/m/val/scores"].dtype == np.float16
    np.testing.assert_array_equal(
        store.read("m", "val"), data.astype(np.float16).astype(np.float32)
    )


def test_chunked_writes_equal_whole_and_rows_are_chunked(store):
    data = scores(300)
    with store.prediction_writer("m", "val", kind="probs", dtype="float32", chunk_rows=64) as w:
        for start in range(0, 300, 37):  # blocks that do not line up with chunks
            w.write(data[start : start + 37])
    arr = store.group["predictions/m/val/scores"]
    assert arr.chunks == (64, len(CLASSES))  # all classes of a row in one chunk
    blocks = list(store.iter_rows("m", "val"))
    assert [b[0].start for b in blocks] == list(range(0, 300, 64))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data)


def test_metrics_match_an_independent_computation(store):
    data = scores(300)
    pred = store.write_prediction("m", "val", kind="logits", scores=data, dtype="float32")
    y = store.split("val").labels
    expected_top1 = np.mean(data.argmax(1) == y)
    order = np.argsort(-data, axis=1)
    expected_top5 = np.mean([y[i] in order[i, :5] for i in range(300)])  # K=4: always 1
    logp = data - np.log(np.exp(data).sum(1, keepdims=True))
    expected_nll = -np.mean(logp[np.arange(300), y])
    assert pred.metrics["top1"] == pytest.approx(expected_top1)
    assert pred.metrics["top5"] == pytest.approx(expected_top5)
    assert pred.metrics["nll"] == pytest.approx(expected_nll, rel=1e-5)
    assert pred.metrics["n"] == 300


def test_unlabelled_split_has_no_metrics(store):
    pred = store.write_prediction("m", "test", kind="logits", scores=scores(200))
    assert pred.metrics == {}


def test_subset_prediction_metrics_use_other(store):
    classes = ["c1", "c3", OTHER]
    y = store.split("val").labels
    mapped = np.array([2, 0, 2, 1])[y]  # c0→other, c1→0, c2→other, c3→1
    logits = np.eye(3, dtype=np.float32)[mapped] * 5
    logits[:30] = np.roll(logits[:30], 1, axis=1)  # 30 wrong rows
    pred = store.write_prediction("spec", "val", kind="logits", scores=logits, classes=classes)
    assert pred.metrics["top1"] == pytest.approx(270 / 300)
    assert store.classes_of(pred) == classes


def test_incomplete_prediction_is_invisible(store):
    with pytest.raises(RuntimeError):
        with store.prediction_writer("m", "val", kind="logits") as w:
            w.write(scores(100))
            raise RuntimeError("crash mid-write")
    assert store.list() == []
    assert "predictions/m" not in store.group
    # a process killed mid-write leaves data without `complete`: readers ignore it
    w = store.prediction_writer("k", "val", kind="logits")
    w.__enter__()
    w.write(scores(300))
    w.lock.release()  # what the death of its process amounts to
    assert store.list() == []
    assert [p.id for p in store.list(include_incomplete=True)] == ["k/val"]
    with pytest.raises(StoreError, match="no complete prediction"):
        store.read("k", "val")
    # and it can be written over without --force
    store.write_prediction("k", "val", kind="logits", scores=scores(300))
    assert [p.id for p in store.list()] == ["k/val"]


def test_missing_rows_are_refused_and_leave_nothing(store):
    with pytest.raises(StoreError, match="never written"):
        with store.prediction_writer("m", "val", kind="logits") as w:
            w.write(scores(299))
    assert store.list(include_incomplete=True) == []


def test_nan_scores_are_refused(store):
    data = scores(300)
    data[[3, 7], 1] = np.nan
    data[9, 0] = np.inf
    with pytest.raises(StoreError, match="3 rows hold NaN or Inf"):
        store.write_prediction("m", "val", kind="logits", scores=data)
    assert store.list(include_incomplete=True) == []


def test_duplicate_ids_refused_unless_replace(store):
    store.write_prediction("m", "val", kind="logits", scores=scores(300))
    with pytest.raises(StoreError, match="already exists"):
        store.write_prediction("m", "val", kind="logits", scores=scores(300, 2))
    store.write_prediction(
        "m", "val", kind="logits", scores=scores(300, 2), replace=True, dtype="float32"
    )
    np.testing.assert_array_equal(store.read("m", "val"), scores(300, 2))


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "", ".hidden", "x..y", "/abs", "a\\b", "a b", "__meta", "é"]
)
def test_path_escaping_names_refused(store, name, tmp_path):
    with pytest.raises(StoreError, match="invalid"):
        store.write_prediction(name, "val", kind="logits", scores=scores(300))
    with pytest.raises(StoreError, match="invalid"):
        store.add_split(name, ["a"])
    assert store.names() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.zarr.locks", "s.zarr"]
    assert list((tmp_path / ".s.zarr.locks").iterdir()) == []  # every lock released


def test_split_with_other_samples_is_refused(store):
    fp = store.add_split(
        "val", [f"v{i:03d}" for i in range(300)], store.split("val").labels
    )  # same ids: a no-op
    assert fp == store.split("val").fingerprint
    with pytest.raises(AlignmentError, match="holds other samples"):
        store.add_split("val", [f"v{i:03d}" for i in range(299)])


def test_fingerprint_is_sha256_of_ordered_ids():
    import hashlib

    ids = ["b", "a", "c/d.png"]
    assert split_fingerprint(ids) == "sha256:" + hashlib.sha256(b"b\na\nc/d.png").hexdigest()[:16]
    assert split_fingerprint(ids) != split_fingerprint(sorted(ids))


def test_misaligned_predictions_are_refused(store):
    a = store.write_prediction("a", "val", kind="logits", scores=scores(300))
    b = store.write_prediction("b", "test", kind="logits", scores=scores(200))
    with pytest.raises(AlignmentError, match="different sample lists"):
        store.check_aligned([a, b])
    c = store.write_prediction(
        "c", "val", kind="logits", scores=scores(300)[:, :3], classes=["c0", "c1", "c2"]
    )
    with pytest.raises(AlignmentError, match="covers classes"):
        store.check_aligned([a, c])
    store.check_aligned([a, c], allow_subset=True)


def test_other_class_space_is_refused(store):
    with pytest.raises(AlignmentError, match="use a separate store"):
        store.set_classes(["x", "y"])


def test_list_filters_by_pattern_split_and_attrs(store):
    for name, loss, size in [
        ("r-ce-s32", "ce", 32),
        ("r-taylor-s32", "taylor_ce", 32),
        ("r-ce-s46", "ce", 46),
    ]:
        store.write_prediction(
            name, "val", kind="logits", scores=scores(300), meta={"loss": loss, "test_size": size}
        )
    assert [p.name for p in store.list("r-ce-*")] == ["r-ce-s32", "r-ce-s46"]
    assert [p.name for p in store.list(loss="ce", test_size="32")] == ["r-ce-s32"]
    assert [p.name for p in store.list(test_size=46)] == ["r-ce-s46"]
    assert store.list(split="test") == []


def test_newer_format_version_is_a_clear_error(store):
    store.group.attrs.update({"ee": {"format": "ee.predictions", "version": 2}})
    with pytest.raises(FormatVersionError, match="newer than this ee reads"):
        open_store(store.path, "r")


def test_plain_zarr_group_is_not_a_store(tmp_path):
    zarr.open_group(str(tmp_path / "z.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an ee prediction store"):
        open_store(tmp_path / "z.zarr", "r")


def test_store_reads_with_plain_zarr_and_no_ee_import(store):
    store.write_prediction("m", "val", kind="logits", scores=scores(300))
    store.write_prediction(
        "lab", "val", kind="labels", labels=np.arange(300) % 4, votes=np.ones((300, 4))
    )
    script = f"""
import json, sys, numpy as np, zarr
g = zarr.open_group({store.path!r}, mode="r")
out = {{"root": g.attrs.asdict(), "arrays": {{}}}}
def walk(group, prefix):
    for key, arr in group.arrays():
        data = np.asarray(arr[:])
        out["arrays"][prefix + key] = [list(data.shape), str(data.dtype)]
    for key, sub in group.groups():
        walk(sub, prefix + key + "/")
walk(g, "")
assert not any(m.startswith("ensemble_engine") or m.startswith("ee_") for m in sys.modules)
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert out["root"]["ee"] == {"format": "ee.predictions", "version": 1}
    assert out["root"]["classes"] == CLASSES
    arrays = out["arrays"]
    assert arrays["predictions/m/val/scores"] == [[300, 4], "float16"]
    assert arrays["predictions/lab/val/label"] == [[300], "int32"]
    assert arrays["predictions/lab/val/votes"] == [[300, 4], "float32"]
    assert arrays["splits/val/label"] == [[300], "int32"]
    assert arrays["splits/val/sample_id"][0] == [300]


def test_labels_prediction_round_trip(store):
    labels = (np.arange(300) * 7) % 4
    pred = store.write_prediction("lab", "val", kind="labels", labels=labels)
    np.testing.assert_array_equal(store.read("lab", "val"), labels)
    assert pred.metrics["top1"] == pytest.approx(np.mean(labels == store.split("val").labels))
    with pytest.raises(StoreError, match="labels outside"):
        store.write_prediction("bad", "val", kind="labels", labels=labels + 1)
