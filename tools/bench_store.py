"""Store write/read throughput against np.save/np.load of the same array, measured in one run.

    python tools/bench_store.py [--rows 50000] [--classes 1000] [--repeats 7]

Writes and reads one [rows, classes] float16 logits prediction through the public store API
(``write_prediction``, ``read``, ``iter_rows``) and the same array with np.save / np.load, all
in the same files system cache. Each repeat runs every case once, one after the other, so that
a machine busy with other work slows all of them alike; the best of the repeats is reported.
``read`` returns float32 (the API's contract), twice the bytes np.load returns, so it is also
compared with np.load followed by ``astype(float32)``, the same result by numpy.
Targets: read ≥ 0.7x, write ≥ 0.5x (store speed / numpy speed). The ratios are printed last.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensemble_engine.prediction_io import RowChunks
from ensemble_engine.store import open_store

READ_TARGET, WRITE_TARGET = 0.7, 0.5


def best_of(repeats: int, cases: dict[str, Callable[[int], object]]) -> dict[str, float]:
    """Best wall time of each case; every repeat runs all cases in turn."""
    best = dict.fromkeys(cases, float("inf"))
    for i in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(i)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
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

        chunks = RowChunks(st.group["predictions/m/test/scores"])

        def stream(_: int) -> None:
            for _rows, _block in st.iter_rows("m", "test"):
                pass

        t = best_of(
            args.repeats,
            {
                "np.save": lambda i: np.save(npy, data),
                # a new name each time: the write, not the removal of an older version
                "store write": lambda i: st.write_prediction(
                    f"w{i}", "test", kind="logits", scores=data
                ),
                "np.load": lambda i: np.load(npy),
                "np.load+f32": lambda i: np.load(npy).astype(np.float32),
                "store read": lambda i: st.read("m", "test"),
                "store stream": stream,
                "chunks f16": lambda i: chunks.read(),  # the stored bytes, not widened
                "split ids": lambda i: st.split("test"),
            },
        )
        chunks = st.group["predictions/m/test/scores"].chunks
        print(
            f"array [{args.rows}, {args.classes}] float16 = {mb:.0f} MiB; store chunks {chunks}; "
            f"best of {args.repeats}"
        )
        for name, sec in t.items():
            rate = "" if name == "split ids" else f"{mb / sec:8.0f} MiB/s"
            print(f"  {name:13s} {sec:7.3f} s  {rate}")
        print(
            "  (store write includes reading the split's sample ids, 'split ids', and ~10 "
            "metadata writes; store read and stream return float32; 'chunks f16' reads the "
            "stored float16 with the store's chunk reader, without widening)"
        )
        print(f"stream ratio (iter_rows / np.load): {t['np.load'] / t['store stream']:.2f}x")
        raw = t["np.load"] / t["chunks f16"]
        print(f"float16 chunk read ratio (chunks f16 / np.load): {raw:.2f}x")
        print(
            f"read ratio, same float32 result (store / np.load+astype): "
            f"{t['np.load+f32'] / t['store read']:.2f}x"
        )
        print(
            f"write ratio (store / np.save speed): {t['np.save'] / t['store write']:.2f}x "
            f"(target >= {WRITE_TARGET}x)"
        )
        print(
            f"read ratio (store / np.load speed): {t['np.load'] / t['store read']:.2f}x "
            f"(target >= {READ_TARGET}x)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
