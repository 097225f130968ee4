"""Streaming: a graph holds a bounded number of row blocks whatever the split size, and the
direct chunk I/O under it writes and reads exactly what zarr itself writes and reads.

(That each stored chunk is read once is tested in test_graph.py.)
"""

from __future__ import annotations

import tracemalloc
import weakref
from collections import Counter

import numpy as np
import pytest
import zarr

from ensemble_engine.errors import StoreError
from ensemble_engine.graph import execute, load_graph, plan
from ensemble_engine.graph import runner as graph_runner
from ensemble_engine.prediction_io import RowChunks, all_finite, widen_float16
from ensemble_engine.store import PredictionStore, open_store

K = 200
INPUTS = 4
GRAPH = """\
version: 1
fit: val
apply: [test]
nodes:
  fused: {combiner: soft_vote, inputs: ["m*"], params: {weights: softmax_score}}
output: fused
"""


def make_store(path, rows: int, chunk_rows: int = 24) -> PredictionStore:
    st = open_store(path, "w")
    st.set_classes([f"c{k}" for k in range(K)])
    rng = np.random.default_rng(rows)
    st.add_split("val", [f"v{i}" for i in range(rows)], rng.integers(0, K, rows))
    st.add_split("test", [f"t{i}" for i in range(rows)])
    for i in range(INPUTS):
        for split in ("val", "test"):
            logits = rng.normal(size=(rows, K)).astype(np.float32)
            with st.prediction_writer(f"m{i}", split, kind="logits", chunk_rows=chunk_rows) as w:
                for a in range(0, rows, 50):  # batches that straddle chunks, as a producer's
                    w.write(logits[a : a + 50])
    return st


def run_counting(tmp_path, st: PredictionStore, monkeypatch) -> tuple[int, int]:
    """Execute GRAPH; return (most stored row blocks alive at once, tracemalloc peak bytes)."""
    alive, peak = Counter(), [0]
    original = PredictionStore.iter_rows

    def tracked(self, name, split, chunk_rows=None, **options):
        for rows, block in original(self, name, split, chunk_rows, **options):
            alive["now"] += 1
            peak[0] = max(peak[0], alive["now"])
            weakref.finalize(block, alive.subtract, ["now"])
            yield rows, block

    monkeypatch.setattr(PredictionStore, "iter_rows", tracked)
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 10)  # not 24
    (tmp_path / "g.yaml").write_text(GRAPH)
    p = plan(load_graph(str(tmp_path / "g.yaml")), st)
    tracemalloc.start()
    try:
        execute(p, st, force=True)
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak[0], traced


def test_a_graph_holds_a_bounded_number_of_blocks_whatever_the_rows(tmp_path, monkeypatch):
    small = make_store(tmp_path / "small.zarr", 600)
    large = make_store(tmp_path / "large.zarr", 2400)  # 100 chunks per input and split
    blocks_small, bytes_small = run_counting(tmp_path, small, monkeypatch)
    blocks_large, bytes_large = run_counting(tmp_path, large, monkeypatch)
    # a reader keeps its current stored block and the rest of the one before: 2 per input
    assert blocks_small <= 2 * INPUTS and blocks_large <= 2 * INPUTS
    split_bytes = 2400 * K * 4 * INPUTS  # every input of the large split as float32: 7.7 MB
    assert bytes_large < split_bytes / 4
    assert bytes_large < bytes_small + split_bytes / 16  # 4x the rows, (nearly) no more memory
    fused = large.read("fused", "test")
    weights = large.get("fused", "test").attrs["state"]["weights"]
    expected = sum(w * softmax(large.read(name, "test")) for name, w in weights.items())
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- the direct chunk I/O ----------------------------------------------------------------------


def test_direct_writes_are_what_zarr_reads_and_zarr_writes_what_direct_reads(tmp_path):
    st = make_store(tmp_path / "s.zarr", 130)  # 130 = 5 chunks of 24 + an edge chunk of 10
    arr = st.group["predictions/m0/val/scores"]
    assert RowChunks(arr).folder is not None  # the direct path is the one under test
    np.testing.assert_array_equal(st.read("m0", "val"), arr[:].astype(np.float32))
    # the edge chunk at full size, then its 4-byte CRC32C (zarr's crc32c codec)
    assert (tmp_path / "s.zarr/predictions/m0/val/scores/c/5/0").stat().st_size == 24 * K * 2 + 4
    # an array zarr writes itself, even compressed (another tool's), reads the same
    data = np.random.default_rng(2).normal(size=(130, K)).astype(np.float16)
    arr[:] = data
    np.testing.assert_array_equal(st.read("m0", "val"), data.astype(np.float32))
    g = st.group["predictions/m1/val"]
    del g["scores"]
    g.create_array("scores", data=data, chunks=(32, K), compressors=zarr.codecs.ZstdCodec())
    assert RowChunks(g["scores"]).folder is None
    np.testing.assert_array_equal(st.read("m1", "val"), data.astype(np.float32))
    blocks = [b for _, b in st.iter_rows("m1", "val")]
    np.testing.assert_array_equal(np.concatenate(blocks), data.astype(np.float32))


def test_labels_and_votes_round_trip_through_zarr(tmp_path):
    st = make_store(tmp_path / "s.zarr", 130)
    labels = np.arange(130) % K
    votes = np.random.default_rng(3).random((130, K)).astype(np.float32)
    st.write_prediction("v", "val", kind="labels", labels=labels, votes=votes)
    g = st.group["predictions/v/val"]
    np.testing.assert_array_equal(g["label"][:], labels)
    np.testing.assert_array_equal(g["votes"][:], votes)
    np.testing.assert_array_equal(st.read("v", "val"), labels)
    np.testing.assert_array_equal(st.read_votes("v", "val"), votes)


def test_small_batches_write_each_chunk_once_and_any_order_still_works(tmp_path, monkeypatch):
    st = make_store(tmp_path / "s.zarr", 130)
    writes: Counter = Counter()
    original = RowChunks.write_chunk

    def counting(self, chunk, rows):
        writes[chunk] += 1
        original(self, chunk, rows)

    monkeypatch.setattr(RowChunks, "write_chunk", counting)
    data = np.random.default_rng(4).normal(size=(130, K)).astype(np.float32)
    with st.prediction_writer("b", "val", kind="logits", dtype="float32", chunk_rows=24) as w:
        for a in range(0, 130, 7):
            w.write(data[a : a + 7])
    assert writes == {c: 1 for c in range(6)}
    np.testing.assert_array_equal(st.read("b", "val"), data)
    with st.prediction_writer("r", "val", kind="logits", dtype="float32", chunk_rows=24) as w:
        for a in reversed(range(0, 130, 7)):  # backwards: zarr's read-modify-write path
            w.write_at(a, data[a : a + 7])
    np.testing.assert_array_equal(st.read("r", "val"), data)
    assert st.get("r", "val").metrics == pytest.approx(st.get("b", "val").metrics)


def test_widen_float16_is_numpys_cast_for_every_float16():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]  # the bit path; blocks with Inf or NaN fall back
    for values in (finite, every):
        out = widen_float16(values, np.empty(values.shape, np.float32))
        np.testing.assert_array_equal(
            out.view(np.uint32), values.astype(np.float32).view(np.uint32)
        )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_non_finite_scores_are_found_anywhere_and_refused(tmp_path, dtype):
    block = np.zeros((3, 70_000), dtype)  # longer than one pass of the float16 check
    assert all_finite(block)
    for bad in (np.nan, np.inf, -np.inf):
        block[2, 69_999] = bad
        assert not all_finite(block)
        block[2, 69_999] = 0
    big = np.full((1, K), 3.4e38, np.float32)  # finite, but its sum overflows
    assert all_finite(big)
    st = make_store(tmp_path / "s.zarr", 20)
    scores = np.zeros((20, K), np.float32)
    scores[3, 1] = 70_000.0  # finite in float32, Inf in float16
    with pytest.raises(StoreError, match="1 rows hold scores beyond float16's range"):
        st.write_prediction("x", "val", kind="logits", scores=scores)
    scores[3, 1] = np.nan
    with pytest.raises(StoreError, match="1 rows hold NaN or Inf scores"):
        st.write_prediction("x", "val", kind="logits", scores=scores, dtype=dtype)
    assert not st.exists("x", "val", include_incomplete=True)
