"""The chunk I/O under the store: work cut in parts across threads, whole-chunk writes, the
float16 kernels, each against zarr's own reads or numpy's casts.

The parallel paths start at 4 MiB; tests lower ``PARALLEL_BYTES`` so that small arrays take them.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from ensemble_engine import io_pool
from ensemble_engine.chunks import ChunkGatherer, RowChunks, chunk_rows_for
from ensemble_engine.float16 import CHECK_ITEMS, PASS_ITEMS, all_finite, widen_float16


@pytest.fixture
def parallel(monkeypatch):
    """Every range of a byte or more is cut into three parts, with two I/O threads of its own."""
    monkeypatch.setattr(io_pool, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(io_pool, "io_thread_count", lambda: 2)
    monkeypatch.setattr(io_pool, "_IO", None)  # a pool of that size, for this test only


def plain_array(tmp_path, rows: int, k: int, step: int, dtype: str = "float16") -> zarr.Array:
    """An array laid out as the store lays scores out (row chunks, bytes codec, no compressor)."""
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    arr = group.create_array("x", shape=(rows, k), chunks=(step, k), dtype=dtype, compressors=None)
    assert RowChunks(arr).folder is not None  # the direct path is the one under test
    return arr


# --- in_parallel -------------------------------------------------------------------------------


def test_parts_cover_the_range_once_cut_on_aligned_rows_on_several_threads(parallel):
    seen, threads = [], set()
    together = threading.Barrier(3)  # passes only if the three parts run at the same time

    def part(lo: int, hi: int) -> None:
        together.wait(timeout=10)
        seen.append((lo, hi))
        threads.add(threading.get_ident())

    io_pool.in_parallel(part, 5, 305, align=24, nbytes=10)
    cuts = sorted(seen)
    # three parts of 300 rows: the cuts 105 and 205 rounded down to multiples of 24
    assert cuts == [(5, 96), (96, 192), (192, 305)]
    assert len(threads) == 3 and threading.get_ident() in threads


def test_a_small_range_runs_on_the_calling_thread_in_one_call(monkeypatch):
    monkeypatch.setattr(io_pool, "io_thread_count", lambda: 2)
    calls = []
    io_pool.in_parallel(lambda a, b: calls.append((a, b, threading.get_ident())), 0, 10, nbytes=99)
    assert calls == [(0, 10, threading.get_ident())]
    io_pool.in_parallel(lambda a, b: calls.append((a, b)), 0, 10, align=24, nbytes=1 << 30)
    assert calls[1:] == [(0, 10)]  # no cut on a multiple of 24 inside 0..10


def test_an_error_in_any_part_is_raised_after_every_part_stopped(parallel):
    finished = []

    def part(lo: int, hi: int) -> None:
        if lo == 0:
            raise ValueError("the calling thread's part")
        threading.Event().wait(0.05)  # the other parts end later
        finished.append(lo)

    with pytest.raises(ValueError, match="calling thread's part"):
        io_pool.in_parallel(part, 0, 90, nbytes=10)
    assert sorted(finished) == [30, 60]


# --- RowChunks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_parallel_reads_of_any_row_range_equal_zarrs(tmp_path, parallel, dtype):
    arr = plain_array(tmp_path, 130, 7, 24, dtype)  # 5 chunks of 24 and an edge chunk of 10
    data = np.random.default_rng(0).normal(size=(130, 7)).astype(dtype)
    arr[:] = data  # written by zarr
    chunks = RowChunks(arr)
    for start, stop in [(0, 130), (5, 129), (24, 48), (23, 25), (100, 130)]:
        np.testing.assert_array_equal(chunks.read(start, stop), data[start:stop])
        widened = chunks.read(start, stop, dtype=np.float32)
        assert widened.dtype == np.float32
        np.testing.assert_array_equal(widened, data[start:stop].astype(np.float32))


def test_whole_chunks_written_at_once_read_back_through_zarr(tmp_path, parallel):
    arr = plain_array(tmp_path, 130, 7, 24)
    data = np.random.default_rng(1).normal(size=(130, 7)).astype(np.float16)
    RowChunks(arr).write_chunks(0, data)  # 6 chunks, the last one of 10 rows padded
    np.testing.assert_array_equal(arr[:], data)
    assert (tmp_path / "a.zarr/x/c/5/0").stat().st_size == 24 * 7 * 2
    RowChunks(arr).write_chunks(2, -data[48:96])  # chunks 2 and 3 only
    np.testing.assert_array_equal(arr[:], np.concatenate([data[:48], -data[48:96], data[96:]]))


def test_gatherer_writes_a_block_of_whole_chunks_at_once_and_gathers_the_ends(tmp_path, parallel):
    arr = plain_array(tmp_path, 130, 7, 24)
    data = np.random.default_rng(2).normal(size=(130, 7)).astype(np.float16)
    gatherer = ChunkGatherer(RowChunks(arr))
    written = []
    original = gatherer.chunks.write_chunks

    def counting(first: int, rows: np.ndarray, check=None) -> None:
        written.append((first, len(rows)))
        original(first, rows, check)

    gatherer.chunks.write_chunks = counting
    gatherer.put(0, data[:10])  # gathered in chunk 0 (rows 0..24)
    gatherer.put(10, data[10:100])  # ends chunk 0; chunks 1 to 3 whole; starts chunk 4 (96..)
    assert written == [(1, 72)]
    gatherer.put(100, data[100:])  # ends chunk 4; the edge chunk 5 (120..130) whole
    gatherer.flush()
    assert written == [(1, 72), (5, 10)]
    np.testing.assert_array_equal(arr[:], data)


def test_chunk_rows_hold_about_two_mib():
    assert chunk_rows_for(1000, 2) == 1048  # 2 MiB / (1000 × 2 bytes)
    assert chunk_rows_for(1000, 4) == 524
    assert chunk_rows_for(10, 4) == 52428
    assert chunk_rows_for(100_000, 4) == 64  # at least 64 rows per chunk


# --- float16 kernels ---------------------------------------------------------------------------


def test_widening_falls_back_only_in_pieces_holding_inf_or_nan():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    values = np.concatenate([finite, finite[::-1], finite])  # three pieces and a bit
    values[PASS_ITEMS + 3] = np.inf  # the second piece takes numpy's cast
    values[-1] = np.float16(-np.nan)
    out = widen_float16(values.reshape(-1, 2), np.empty((len(values) // 2, 2), np.float32))
    np.testing.assert_array_equal(
        out.reshape(-1).view(np.uint32), values.astype(np.float32).view(np.uint32)
    )
    with pytest.raises(ValueError, match="C-contiguous float32"):
        widen_float16(values, np.empty(len(values), np.float64))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_non_finite_values_are_found_at_piece_edges(dtype):
    values = np.zeros(2 * CHECK_ITEMS + 5, dtype)
    assert all_finite(values) and all_finite(values[:0])
    for at in (0, CHECK_ITEMS - 1, CHECK_ITEMS, 2 * CHECK_ITEMS + 4):
        for bad in (np.nan, np.inf, -np.inf):
            values[at] = bad
            assert not all_finite(values), (at, bad)
        values[at] = 0
    values[7] = -65504 if dtype == "float16" else -3.4e38  # the largest finite magnitude
    assert all_finite(values)
