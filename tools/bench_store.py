"""Store write/read throughput against np.save/np.load of the same array, measured in one run.

    python tools/bench_store.py [--rows 50000] [--classes 1000] [--repeats 7] [--layouts]

Writes and reads one [rows, classes] float16 logits prediction through the public store API
(``write_prediction``, ``read``, ``iter_rows``) and the same array with np.save / np.load, all
in the same file system cache. ``store write`` writes a new prediction each time and
``np.save`` a new file, each removed after its repeat, off the clock: the write, not the removal
of an older version, with the same amount of unwritten data left to the kernel each time (a run
that kept every version would slow later repeats as the kernel flushes them). ``store replace``
writes over one name with ``replace=True``, as ``np.save over`` writes over one file, and so
also pays for deleting the old version's ~100 files and folders. Each repeat runs every case
once, one after the other, so that a machine busy with other work slows all of them alike; the
best of the repeats is reported.

``read()`` returns float32 (the API's contract), twice the bytes np.load returns, so it is also
compared with np.load followed by ``astype(float32)``, the same result by numpy;
``read(dtype="stored")`` returns the stored float16, the same bytes np.load returns.
Targets: read ≥ 0.7x, write ≥ 0.5x (store speed / numpy speed). The ratios are printed last.
The store's side includes the CRC32C of every chunk, computed on write and verified on read
(np.save/np.load check nothing).

``--layouts`` also times the layouts the store did not choose (schemas/README.md, "Container"):
other chunk sizes on ee's direct path, and zarr's own path, plain and compressed, at several
``async.concurrency`` settings.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensemble_engine.store import PredictionStore, open_store

READ_TARGET, WRITE_TARGET = 0.7, 0.5


def best_of(
    repeats: int,
    cases: dict[str, Callable[[int], object]],
    untimed: dict[str, Callable[[int], object]] | None = None,
) -> dict[str, float]:
    """Best wall time of each case; every repeat runs all cases in turn.

    ``untimed[name](i)``, if given, runs right after case ``name``'s repeat ``i``, off the clock.
    """
    best = dict.fromkeys(cases, float("inf"))
    for i in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(i)
            best[name] = min(best[name], time.perf_counter() - start)
            if untimed and name in untimed:
                untimed[name](i)
    return best


def drain(rows: object) -> None:
    for _ in rows:  # type: ignore[attr-defined]
        pass


def layouts(st: PredictionStore, data: np.ndarray, work: Path, repeats: int) -> None:
    """Chunk sizes on the direct path, and zarr's own path at several concurrency settings."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    k, npy = data.shape[1], work / "a.npy"
    cases: dict[str, Callable[[int], object]] = {
        "np.save new": lambda i: np.save(work / f"layout{i}.npy", data),
        "np.load": lambda i: np.load(npy),
    }
    for mib in (1, 2, 4, 8, 16):
        rows = mib * 2**20 // (2 * k)

        def write(i: int, mib: int = mib, rows: int = rows) -> None:
            with st.prediction_writer(f"c{mib}-{i}", "test", kind="logits", chunk_rows=rows) as w:
                w.write(data)

        write(-1)
        cases[f"ee {mib} MiB write"] = write
        cases[f"ee {mib} MiB read"] = lambda i, m=mib: st.read(f"c{m}--1", "test", dtype="stored")
    chunks = st.group["predictions/m/test/scores"].chunks
    for label, codec in {"bytes": None, "zstd": ZstdCodec(level=1), "lz4": BloscCodec()}.items():
        path = work / f"z-{label}.zarr"
        arr = zarr.create_array(
            str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=codec
        )
        arr[:] = data
        size = sum(p.stat().st_size for p in path.rglob("c/*/*")) / data.nbytes
        print(f"  zarr {label}: {size:.2f} of the raw bytes on disk")
        for conc in (1, 10, 64):

            def read(i: int, arr: zarr.Array = arr, conc: int = conc) -> None:
                with zarr.config.set({"async.concurrency": conc}):
                    arr[:]

            cases[f"zarr {label} conc {conc} read"] = read
    t = best_of(repeats, cases)
    for name, sec in t.items():
        base = "np.save new" if name.endswith(("write", "new")) else "np.load"
        print(f"  {name:24s} {sec:7.3f} s  {t[base] / sec:5.2f}x {base}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layouts", action="store_true", help="also time other chunkings and codecs")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((args.rows, args.classes), dtype=np.float32) * 3).astype(np.float16)
    mb = data.nbytes / 2**20
    work = Path(tempfile.mkdtemp(prefix="ee-bench-store-"))
    try:
        st = open_store(work / "s.zarr", "w")
        st.set_classes([f"c{k}" for k in range(args.classes)])
        st.add_split("test", [f"s{i}" for i in range(args.rows)])
        npy = work / "a.npy"
        np.save(npy, data)
        st.write_prediction("m", "test", kind="logits", scores=data)
        t = best_of(
            args.repeats,
            {
                # a new file / a new name each time, removed off the clock: the write, not the
                # removal of an older version, and as many dirty pages for the kernel each time
                "np.save": lambda i: np.save(work / f"new{i}.npy", data),
                "store write": lambda i: st.write_prediction(
                    f"w{i}", "test", kind="logits", scores=data
                ),
                "np.save over": lambda i: np.save(npy, data),
                "store replace": lambda i: st.write_prediction(
                    "m", "test", kind="logits", scores=data, replace=True
                ),
                "np.load": lambda i: np.load(npy),
                "np.load+f32": lambda i: np.load(npy).astype(np.float32),
                "read f32": lambda i: st.read("m", "test"),
                "read stored": lambda i: st.read("m", "test", dtype="stored"),
                "stream f32": lambda i: drain(st.iter_rows("m", "test")),
                "stream stored": lambda i: drain(st.iter_rows("m", "test", dtype="stored")),
            },
            untimed={
                "np.save": lambda i: (work / f"new{i}.npy").unlink(),
                "store write": lambda i: st.delete(f"w{i}", "test"),
            },
        )
        chunks = st.group["predictions/m/test/scores"].chunks
        print(
            f"array [{args.rows}, {args.classes}] float16 = {mb:.0f} MiB; store chunks {chunks}; "
            f"best of {args.repeats}"
        )
        for name, sec in t.items():
            print(f"  {name:13s} {sec:7.3f} s  {mb / sec:8.0f} MiB/s")
        print(
            "  (read/stream f32: read() and iter_rows(), float32, the default; 'stored': "
            "dtype='stored', the stored float16 as np.load returns it)"
        )
        print(
            f"write ratio (store write / np.save speed): {t['np.save'] / t['store write']:.2f}x "
            f"(target >= {WRITE_TARGET}x); replacing the old version, as np.save over its own "
            f"file: {t['np.save over'] / t['store replace']:.2f}x"
        )
        print(
            f"read ratio, same bytes (read(dtype='stored') / np.load): "
            f"{t['np.load'] / t['read stored']:.2f}x (target >= {READ_TARGET}x)"
        )
        print(
            f"read ratio, float32 contract (read() / np.load): {t['np.load'] / t['read f32']:.2f}x"
        )
        print(
            "read ratio, same float32 result (read() / np.load+astype): "
            f"{t['np.load+f32'] / t['read f32']:.2f}x"
        )
        print(
            f"stream ratio (iter_rows / np.load): stored {t['np.load'] / t['stream stored']:.2f}x, "
            f"float32 {t['np.load'] / t['stream f32']:.2f}x"
        )
        if args.layouts:
            print("layouts (best of the same repeats):")
            layouts(st, data, work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
