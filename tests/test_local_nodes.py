"""Groups and arrays made by direct writes in a local folder are what zarr itself would make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec
from zarr.storage import MemoryStore

from ensemble_engine.chunks import RowChunks
from ensemble_engine.errors import StoreError
from ensemble_engine.local_nodes import create_group_with_array, update_group_attrs
from ensemble_engine.store import open_store

ATTRS = {"kind": "logits", "complete": False, "meta": {"sizes": [224, 320], "w": 0.5}}
DIMS = {"dimension_names": ("sample", "class")}
ARRAYS = [
    {"name": "scores", "shape": (1000, 37), "dtype": "float16", "chunks": (256, 37), **DIMS},
    {"name": "scores", "shape": (10, 5), "dtype": "float32", "chunks": (4, 5)},  # no names
    {"name": "label", "shape": (99,), "dtype": "int32", "chunks": (64,), "dimension_names": ["s"]},
]


def documents(folder: Path) -> dict[str, dict]:
    """Every zarr.json under ``folder`` by its relative path, parsed; and no other file."""
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    assert all(p.name == "zarr.json" for p in found), found  # no temporary file left behind
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in found}


def by_zarr(root: zarr.Group, path: str, attrs: dict, array: dict) -> None:
    """The same nodes through zarr's public API: bytes then crc32c, as the store makes them."""
    g = root.require_group(path)
    g.attrs.update(attrs)
    spec = {k: v for k, v in array.items() if k != "name"}
    g.create_array(array["name"], compressors=[Crc32cCodec()], **spec)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: a["dtype"])
def test_documents_equal_zarrs_own(tmp_path, array):
    mine = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    theirs = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    group, arr = create_group_with_array(mine, "predictions/m/val", ATTRS, array)
    by_zarr(theirs, "predictions/m/val", ATTRS, array)
    assert documents(tmp_path / "a.zarr") == documents(tmp_path / "b.zarr")
    # the returned objects are the nodes on disk, usable without reopening them
    assert group.attrs.asdict() == ATTRS
    assert arr.shape == array["shape"] and arr.dtype == np.dtype(array["dtype"])
    data = (np.arange(np.prod(array["shape"])) % 97).reshape(array["shape"])
    RowChunks(arr).write_chunks(0, data.astype(array["dtype"]))
    reopened = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    node = reopened[f"predictions/m/val/{array['name']}"]
    np.testing.assert_array_equal(node[:], data.astype(array["dtype"]))
    assert reopened["predictions/m/val"].attrs.asdict() == ATTRS


def test_existing_parents_keep_their_attrs(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_group("predictions", attributes={"keep": 1})
    root.create_group("predictions/m", attributes={"also": [1, 2]})
    create_group_with_array(root, "predictions/m/test", {"a": 1}, ARRAYS[1])
    reopened = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert reopened["predictions"].attrs.asdict() == {"keep": 1}
    assert reopened["predictions/m"].attrs.asdict() == {"also": [1, 2]}
    assert sorted(reopened["predictions/m"].group_keys()) == ["test"]


def test_update_merges_in_one_document_and_returns_the_new_attrs(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group, _ = create_group_with_array(root, "p/q", {"a": 1, "complete": False}, ARRAYS[1])
    updated = update_group_attrs(group, {"complete": True, "metrics": {"top1": 0.5}})
    expected = {"a": 1, "complete": True, "metrics": {"top1": 0.5}}
    assert updated.attrs.asdict() == expected
    on_disk = json.loads((tmp_path / "s.zarr/p/q/zarr.json").read_text())
    assert on_disk["attributes"] == expected and on_disk["node_type"] == "group"
    assert documents(tmp_path / "s.zarr")  # no temporary files left


def test_other_stores_go_through_zarr():
    root = zarr.open_group(MemoryStore(), mode="w")
    group, arr = create_group_with_array(root, "predictions/m/val", ATTRS, ARRAYS[0])
    assert group.attrs.asdict() == ATTRS and arr.shape == (1000, 37)
    assert root["predictions/m/val/scores"].dtype == np.float16
    update_group_attrs(group, {"complete": True})
    assert root["predictions/m/val"].attrs["complete"] is True


def test_a_block_refused_in_its_last_chunk_leaves_nothing(tmp_path):
    """The finite check runs per chunk as chunks are written: a bad value in the last of many
    chunks (written after the others) still leaves no prediction and no file behind."""
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes([f"c{k}" for k in range(40)])
    st.add_split("test", [f"s{i}" for i in range(5000)])
    st.write_prediction("other", "test", kind="logits", scores=np.zeros((5000, 40)))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    data = np.ones((5000, 40), np.float32)
    data[4990, 3] = np.nan
    data[17, 0] = 1e6  # beyond float16: Inf once stored

    def write(block) -> None:  # 79 chunks of 64 rows, written in parts on two threads
        with st.prediction_writer("m", "test", kind="logits", chunk_rows=64) as w:
            w.write(block)

    with pytest.raises(StoreError, match="2 rows hold NaN or Inf scores"):
        write(data)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before and [p.name for p in st.list(include_incomplete=True)] == ["other"]
    big = np.ones((5000, 40), np.float32)
    big[4999, 39] = 7e4  # finite, beyond float16 only
    with pytest.raises(StoreError, match="1 rows hold scores beyond float16's range"):
        write(big)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    write(np.ones((5000, 40)))
    np.testing.assert_array_equal(st.read("m", "test"), np.ones((5000, 40), np.float32))
