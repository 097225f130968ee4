"""Store reads in the stored dtype, writes that never read the sample ids, and the module split:
every name other code imports from ``store`` and ``prediction_io`` is still there."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from ensemble_engine.errors import StoreError
from ensemble_engine.store import open_store

CLASSES = ["c0", "c1", "c2"]


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(CLASSES)
    st.add_split("val", [f"v{i:03d}" for i in range(130)], np.arange(130) % 3)
    return st


def logits(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, len(CLASSES))) * 3).astype(np.float32)


def test_reads_in_the_stored_dtype_are_the_stored_values(store):
    data = logits(130)
    with store.prediction_writer("m", "val", kind="logits", chunk_rows=24) as w:
        w.write(data)
    half = data.astype(np.float16)  # what float16 storage keeps
    for dtype in ("stored", "float16", np.float16):
        got = store.read("m", "val", dtype=dtype)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.view(np.uint16), half.view(np.uint16))
    default = store.read("m", "val")
    assert default.dtype == np.float32  # the contract: float32 unless asked otherwise
    np.testing.assert_array_equal(default, half.astype(np.float32))
    np.testing.assert_array_equal(store.read("m", "val", dtype="float32"), default)
    blocks = list(store.iter_rows("m", "val", dtype="stored"))
    assert [rows.start for rows, _ in blocks] == [0, 24, 48, 72, 96, 120]
    assert all(block.dtype == np.float16 for _, block in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), half)


def test_float32_scores_read_stored_as_float32_and_narrowed_on_request(store):
    data = logits(130, seed=1)
    store.write_prediction("m", "val", kind="probs", scores=data, dtype="float32")
    stored = store.read("m", "val", dtype="stored")
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, data)
    np.testing.assert_array_equal(store.read("m", "val", dtype="float16"), data.astype(np.float16))


def test_labels_are_read_as_stored_and_bad_dtypes_are_refused(store):
    labels = (np.arange(130) * 5) % 3
    store.write_prediction("lab", "val", kind="labels", labels=labels)
    for dtype in (None, "stored", "float16"):
        got = store.read("lab", "val", dtype=dtype)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, labels)
    store.write_prediction("m", "val", kind="logits", scores=logits(130))
    for bad in ("int8", "float64", "half-ish"):
        with pytest.raises(StoreError, match="cannot read scores as .*'stored'"):
            store.read("m", "val", dtype=bad)


def test_a_writer_needs_the_labels_and_fingerprint_of_a_split_not_its_ids(store, tmp_path):
    header = store.split_header("val")
    full = store.split("val")
    assert (header.name, header.fingerprint, header.n) == ("val", full.fingerprint, 130)
    np.testing.assert_array_equal(header.labels, full.labels)
    # damage the sample ids' data: reading the ids fails, writing a prediction does not
    chunk = tmp_path / "s.zarr/splits/val/sample_id/c/0"
    chunk.write_bytes(b"not the ids")
    with pytest.raises(StoreError, match="split val is damaged"):
        store.split("val")
    data = logits(130, seed=2)
    pred = store.write_prediction("m", "val", kind="logits", scores=data, dtype="float32")
    assert pred.attrs["split_fingerprint"] == full.fingerprint
    assert pred.metrics["top1"] == pytest.approx(np.mean(data.argmax(1) == full.labels))


def test_write_prediction_returns_what_get_reads_back(store):
    pred = store.write_prediction(
        "m", "val", kind="logits", scores=logits(130), meta={"loss": "ce", "seed": np.int64(3)}
    )
    again = store.get("m", "val")
    assert (
        (pred.id, pred.kind, pred.shape)
        == (again.id, again.kind, again.shape)
        == (
            "m/val",
            "logits",
            (130, 3),
        )
    )
    assert pred.attrs == again.attrs and pred.attrs["seed"] == 3 and pred.complete


def test_a_missing_split_is_named_whatever_the_name(store):
    for name in ("test", "../val", "a/b"):
        with pytest.raises(StoreError, match=r"has no split .* \(splits: val\)"):
            store.split_header(name)


# Names other modules import (grep of plugins/, tools/, tests/ and ensemble_engine/).
IMPORTED = {
    "ensemble_engine.store": [
        "FORMAT",
        "VERSION",
        "Prediction",
        "PredictionStore",
        "Split",
        "check_name",
        "open_store",
        "parse_id",
        "split_fingerprint",
    ],
    "ensemble_engine.prediction_io": [
        "METRIC_ROWS",
        "PredictionWriter",
        "RowChunks",
        "all_finite",
        "chunk_rows_for",
        "clean_attrs",
        "widen_float16",
    ],
}


@pytest.mark.parametrize("module", sorted(IMPORTED))
def test_names_other_code_imports_are_still_there(module):
    mod = importlib.import_module(module)
    missing = [name for name in IMPORTED[module] if not hasattr(mod, name)]
    assert missing == []


def test_a_store_created_meanwhile_by_another_process_is_opened(tmp_path, monkeypatch):
    """Two ``ee produce`` into a new store at once: a create that finds the other's store
    (zarr raises ContainsGroupError when the group appears between its own checks) opens it."""
    import zarr

    import ensemble_engine.location as location

    path = tmp_path / "ee.zarr"
    first = open_store(path, "a")
    first.group.attrs.update({"marker": 1})
    real_open = zarr.open_group

    def racing_open(*args, **kwargs):
        if kwargs.get("mode") == "w-":  # the other process's group appeared just now
            raise zarr.errors.ContainsGroupError("A group exists in store at path ''.")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(location, "_exists", lambda spath, is_url: False)  # checked too early
    monkeypatch.setattr(location.zarr, "open_group", racing_open)
    second = open_store(path, "a")
    assert second.group.attrs["marker"] == 1
    assert second.group.attrs["ee"]["version"] == first.group.attrs["ee"]["version"]
