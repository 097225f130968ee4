"""Damaged or missing chunks are found on every read and by ``ee validate`` (issue 18, item 4).

Every array ee writes carries zarr v3's ``crc32c`` codec and every chunk is written (none left
implicit as the fill value), so a missing, truncated or corrupted chunk is an error wherever it
is read: one line naming the prediction and the fix, exit 2, nothing written. ``ee validate``
counts each array's chunks (and, in a local folder, checks their sizes); ``--deep`` reads them.
Stores written before the checksum (``bytes`` codec alone) still read and validate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from helpers import snapshot

from ensemble_engine.chunk_files import DamagedChunk
from ensemble_engine.chunks import CODECS, RowChunks
from ensemble_engine.store import open_store
from ensemble_engine.validate import validate_store

N, K = 12000, 100  # float16 scores: 2 chunks of 10485 rows; combine's float32 blocks: 3
GRAPH = """\
version: 1
fit: val
apply: [val, test]
nodes:
  soft: {combiner: soft_vote, inputs: ["m*"]}
output: soft
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "s.zarr"
    st = open_store(path, "w")
    st.set_classes([f"c{i:03d}" for i in range(K)])
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        st.add_split(split, [f"{split}{i:06d}" for i in range(N)], rng.integers(0, K, N))
        for m in ("m1", "m2"):
            st.write_prediction(m, split, kind="logits", scores=rng.normal(size=(N, K)))
    (path.parent / "graph.yaml").write_text(GRAPH)
    return path


@pytest.fixture
def store(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "s.zarr")
    shutil.copy(template.parent / "graph.yaml", tmp_path / "graph.yaml")
    return tmp_path / "s.zarr"


CHUNK = "predictions/m1/test/scores/c/1/0"


def remove(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "missing": (remove, "is missing", "1 of 2 chunks missing (c/1/0)"),
    "truncated": (truncate, "holds 1000 bytes", "damaged chunk(s) (c/1/0: holds 1000 bytes"),
    "corrupted": (flip, "fails its CRC32C checksum", None),  # only --deep reads the bytes
}
FIX = "re-create"


def one_line_exit_2(res, *parts: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_validate_names_the_damaged_prediction_and_the_fix(store, run_cli, damage):
    make, read_problem, shallow = DAMAGE[damage]
    make(store / CHUNK)
    res = run_cli("validate", store)
    if shallow is None:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 1 and shallow in res.stderr and FIX in res.stderr, res.output
    res = run_cli("validate", store, "--deep")
    assert res.exit_code == 1, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{store}: predictions/m1/test/scores: ")
    assert "c/1/0" in lines[0] and FIX in lines[0], lines[0]
    if shallow is None:
        assert read_problem in lines[0], lines[0]


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["export", "combine", "combine --workers 2"])
def test_reading_a_damaged_chunk_is_one_line_and_writes_nothing(store, run_cli, damage, command):
    make, read_problem, _ = DAMAGE[damage]
    make(store / CHUNK)
    root = store.parent
    before = snapshot(root)
    if command == "export":
        args = ["export", store, "m1/test", "-o", root / "sub.csv"]
    else:
        args = ["combine", root / "graph.yaml", "--store", store, *command.split()[1:]]
    res = run_cli(*args)
    one_line_exit_2(res, "prediction m1/test is damaged: chunk c/1/0", read_problem, FIX)
    # combine publishes soft/val before it meets the damaged test chunk: that complete output
    # is the only change; soft/test, written until then, was aborted whole
    after = snapshot(root)
    soft = f"{root.name}/s.zarr/predictions/soft"
    added = {k for k in after if k not in before}
    assert all(k in (soft, f"{soft}/zarr.json") or k.startswith(f"{soft}/val") for k in added)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not (store / "predictions/soft/test").exists()


def test_a_rerun_combine_that_meets_damage_keeps_its_old_outputs(store, run_cli):
    graph = store.parent / "graph.yaml"
    assert run_cli("combine", graph, "--store", store).exit_code == 0
    flip(store / CHUNK)
    before = snapshot(store.parent)
    res = run_cli("combine", graph, "--store", store, "--force")
    one_line_exit_2(res, "prediction m1/test is damaged", "fails its CRC32C checksum")
    after = snapshot(store.parent)
    # soft/val was recomputed whole (the same rows: at most its ``created`` time differs); the
    # old soft/test is kept byte for byte, the new one was aborted in its staged copy
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {f"{store.parent.name}/s.zarr/predictions/soft/val/zarr.json"}


def test_every_chunk_is_written_even_all_fill_values(tmp_path):
    for url in (str(tmp_path / "s.zarr"), "memory://zeros.zarr"):
        st = open_store(url, "w")
        st.set_classes(["a", "b", "c"])
        st.add_split("val", [f"v{i}" for i in range(1000)])
        with st.prediction_writer("z", "val", kind="logits", chunk_rows=64) as w:
            for _ in range(0, 1000, 100):  # blocks that straddle chunks go through zarr too
                w.write(np.zeros((100, 3)))
        st.write_prediction(
            "v", "val", kind="labels", labels=np.zeros(1000, int), votes=np.zeros((1000, 3))
        )
        for path in ("predictions/z/val/scores", "predictions/v/val/label", "splits/val/label"):
            arr = st.group[path]
            assert [dict(c) for c in arr.metadata.to_dict()["codecs"]] == CODECS
            assert RowChunks(arr).missing() == [], (url, path)
        votes = st.group["predictions/v/val/votes"]
        assert [dict(c) for c in votes.metadata.to_dict()["codecs"]] == CODECS
        assert RowChunks(votes).missing() == []
        assert validate_store(url, deep=True) == []
    fsspec.filesystem("memory").rm("/zeros.zarr", recursive=True)


def test_a_missing_chunk_at_a_url_is_an_error_not_fill_values():
    url = "memory://missing.zarr"
    st = open_store(url, "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [f"v{i}" for i in range(1000)])
    st.write_prediction("m", "val", kind="logits", scores=np.ones((1000, 3)))
    fs = fsspec.filesystem("memory")
    chunks = fs.find("/missing.zarr/predictions/m/val/scores/c")
    fs.rm(chunks[0])
    with pytest.raises(DamagedChunk, match="prediction m/val is damaged: chunk c/0/0 .* missing"):
        st.read("m", "val")
    assert any("1 of 1 chunks missing" in p for p in validate_store(url))
    fs.rm("/missing.zarr", recursive=True)


def test_a_store_written_without_checksums_still_reads_and_validates(tmp_path, run_cli):
    """Stores from before the crc32c codec: ``bytes`` alone (readers follow each array's
    codec list), read by ee's direct path and by zarr alike."""
    path = tmp_path / "old.zarr"
    st = open_store(path, "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [f"v{i}" for i in range(500)], np.arange(500) % 3)
    scores = np.random.default_rng(1).normal(size=(500, 3)).astype(np.float16)
    st.write_prediction("m", "val", kind="logits", scores=scores)
    g = zarr.open_group(str(path), mode="r+")
    attrs = g["predictions/m/val"].attrs.asdict()
    del g["predictions/m/val/scores"]
    old = g["predictions/m/val"].create_array(
        "scores", shape=(500, 3), dtype="float16", chunks=(128, 3), compressors=None
    )
    old[:] = scores
    g["predictions/m/val"].attrs.update(attrs)
    meta = json.loads((path / "predictions/m/val/scores/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]
    assert RowChunks(open_store(path, "r").group["predictions/m/val/scores"]).folder is not None
    np.testing.assert_array_equal(open_store(path, "r").read("m", "val", dtype="stored"), scores)
    assert run_cli("validate", path, "--deep").exit_code == 0
