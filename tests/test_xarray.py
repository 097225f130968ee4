"""The store in xarray: every array names its dimensions, and ``to_xarray`` labels a prediction."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from ensemble_engine.errors import EEError
from ensemble_engine.store import open_store
from ensemble_engine.validate import validate_store

CLASSES = ["a", "b", "c"]
IDS = [f"img/{i}.png" for i in range(7)]
LABELS = [0, 1, 2, 0, 1, 2, -1]


def _open(store: Path, group: str):
    return xr.open_zarr(store, group=group, consolidated=False)


@pytest.fixture
def store(tmp_path):
    """Full-space float16 logits in 4 chunks (a padded edge chunk), float32 probs, a specialist
    with ``__other__``, and labels with votes, all through the public API."""
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(CLASSES)
    st.add_split("val", IDS, LABELS)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)).astype(np.float16)
    logits[0] = 0  # the fill value: must read back as 0, not as missing
    with st.prediction_writer("m", "val", kind="logits", chunk_rows=2) as w:
        w.write(logits)
    probs = rng.dirichlet(np.ones(3), size=7).astype(np.float32)
    st.write_prediction("p", "val", kind="probs", scores=probs, dtype="float32")
    spec = rng.normal(size=(7, 2)).astype(np.float32)
    st.write_prediction("spec", "val", kind="logits", scores=spec, classes=["c", "__other__"])
    votes = rng.integers(0, 3, size=(7, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    st.write_prediction("vote", "val", kind="labels", labels=labels, votes=votes)
    return st


def test_api_store_opens_in_xarray_with_the_stored_values(store):
    for name in ("m", "p", "spec"):
        ds = _open(store.path, f"predictions/{name}/val")
        want = store.read(name, "val", dtype="stored")
        assert ds["scores"].dims == ("sample", "class")
        assert ds["scores"].dtype == want.dtype
        np.testing.assert_array_equal(ds["scores"].values, want)
        assert ds.attrs["complete"] is True
    ds = _open(store.path, "predictions/vote/val")
    assert ds["label"].dims == ("sample",) and ds["votes"].dims == ("sample", "class")
    np.testing.assert_array_equal(ds["label"].values, store.read("vote", "val"))
    np.testing.assert_array_equal(ds["votes"].values, store.read_votes("vote", "val"))
    split = _open(store.path, "splits/val")
    assert split["sample_id"].dims == ("sample",) and split["label"].dims == ("sample",)
    assert [str(s) for s in split["sample_id"].values] == IDS
    np.testing.assert_array_equal(split["label"].values, LABELS)


def test_imported_store_opens_in_xarray_with_the_stored_values(tmp_path, run_cli):
    """``ee import`` writes float16 in several chunks by ee's direct chunk I/O; zarr, under
    xarray, checks each chunk's CRC32C and reads exactly the stored values."""
    n, k = 60_000, 40  # 26 214 rows a chunk: 3 chunks, the last one padded
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes([f"c{i}" for i in range(k)])
    st.add_split("test", [f"{i}.png" for i in range(n)], np.arange(n) % k)
    scores = np.random.default_rng(1).normal(size=(n, k)).astype(np.float32)
    np.save(tmp_path / "x.npy", scores)
    res = run_cli("import", st.path, tmp_path / "x.npy", "--split", "test", "--id", "imp")
    assert res.exit_code == 0, res.output
    (tmp_path / "sub.txt").write_text("c3\nc5\n__other__\n")
    np.save(tmp_path / "sub.npy", scores[:, :3])
    res = run_cli(
        "import", st.path, tmp_path / "sub.npy", "--split", "test", "--id", "sub",
        "--classes", tmp_path / "sub.txt",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    st = open_store(st.path, "r")
    for name, width in (("imp", k), ("sub", 3)):
        want = st.read(name, "test", dtype="stored")
        assert want.dtype == np.float16 and want.shape == (n, width)
        ds = _open(st.path, f"predictions/{name}/test")
        assert ds["scores"].dims == ("sample", "class") and ds["scores"].dtype == np.float16
        np.testing.assert_array_equal(ds["scores"].values, want)
    arr = zarr.open_array(st.path, path="predictions/imp/test/scores", mode="r")
    assert arr.nchunks == 3


def test_to_xarray_labels_samples_and_classes(store):
    da = store.to_xarray("m", "val")
    assert da.name == "scores" and da.dims == ("sample", "class")
    assert list(da["sample"].values) == IDS and list(da["class"].values) == CLASSES
    np.testing.assert_array_equal(da.values, store.read("m", "val"))  # float32, as read()
    assert da.dtype == np.float32
    assert da.attrs == store.get("m", "val").attrs
    json.dumps(da.attrs)  # JSON-safe
    stored = store.to_xarray("m", "val", dtype="stored")
    assert stored.dtype == np.float16
    assert float(da.sel(sample="img/0.png", **{"class": "b"})) == 0.0
    spec = store.to_xarray("spec", "val")
    assert list(spec["class"].values) == ["c", "__other__"] and spec.shape == (7, 2)
    np.testing.assert_array_equal(spec.values, store.read("spec", "val"))
    lab = store.to_xarray("vote", "val")
    assert lab.name == "label" and lab.dims == ("sample",) and lab.ndim == 1
    assert list(lab["sample"].values) == IDS and "class" not in lab.coords
    assert lab.attrs["classes"] == CLASSES
    np.testing.assert_array_equal(lab.values, [0, 1, 2, 2, 1, 0, 0])


def _drop_dimension_names(folder: Path) -> int:
    """Every array's ``dimension_names`` removed from its zarr.json, as ee wrote them before."""
    dropped = 0
    for doc in folder.rglob("zarr.json"):
        meta = json.loads(doc.read_text())
        if meta.get("node_type") == "array":
            assert meta.pop("dimension_names")
            doc.write_text(json.dumps(meta))
            dropped += 1
    return dropped


def test_arrays_without_dimension_names_still_read_and_validate(store, run_cli):
    before = {n: store.read(n, "val", dtype="stored") for n in ("m", "p", "spec", "vote")}
    # 4 split/prediction main arrays + votes + the split's two arrays
    assert _drop_dimension_names(Path(store.path)) == 7
    old = open_store(store.path, "r")
    arr = zarr.open_array(store.path, path="predictions/m/val/scores", mode="r")
    assert arr.metadata.dimension_names is None
    for name, want in before.items():
        np.testing.assert_array_equal(old.read(name, "val", dtype="stored"), want)
    assert list(old.split("val").sample_ids) == IDS
    warnings: list[str] = []
    assert validate_store(old.path, deep=True, warnings=warnings) == []
    res = run_cli("validate", old.path, "--deep")
    assert res.exit_code == 0, res.output
    da = old.to_xarray("m", "val")  # coordinates come from the store, not the array metadata
    assert da.dims == ("sample", "class") and list(da["sample"].values) == IDS


def test_zarr_api_path_writes_dimension_names(tmp_path):
    """A store at a URL creates its arrays through zarr's API: the same names."""
    st = open_store("memory://dims-test.zarr", "w")
    st.set_classes(CLASSES)
    st.add_split("val", IDS, LABELS)
    st.write_prediction("m", "val", kind="logits", scores=np.ones((7, 3), np.float32))
    st.write_prediction("v", "val", kind="labels", labels=np.zeros(7), votes=np.ones((7, 3)))
    dims = {
        path: tuple(st.group[path].metadata.dimension_names)
        for path in (
            "splits/val/sample_id", "splits/val/label", "predictions/m/val/scores",
            "predictions/v/val/label", "predictions/v/val/votes",
        )
    }  # fmt: skip
    assert dims == {
        "splits/val/sample_id": ("sample",),
        "splits/val/label": ("sample",),
        "predictions/m/val/scores": ("sample", "class"),
        "predictions/v/val/label": ("sample",),
        "predictions/v/val/votes": ("sample", "class"),
    }


def test_to_xarray_without_xarray_names_the_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now raises ImportError
    with pytest.raises(EEError) as err:
        store.to_xarray("m", "val")
    msg = str(err.value)
    assert "\n" not in msg and "pip install 'ensemble-engine[xarray]'" in msg
