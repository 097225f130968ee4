"""Fusion-graph throughput, peak memory and cache at VIPriors scale, against a compute bound.

    python tools/bench_combine.py [--rows 50000] [--classes 1000] [--backbones 11]
                                  [--store PATH] [--keep] [--no-curve] [--workers 1]

Generates a synthetic store (``--backbones`` × 2 losses × 3 test sizes logits predictions, 66 by
default, plus 3 specialists ``cov-*`` over 20 classes and ``__other__``; splits val (labelled,
the fit split) and test), then runs, each phase in a fresh process so its peak RSS is its own:

- bound: torch softmax + weighted sum of the inputs' rows already in memory as float32, on all
  cores and on one; the faster is the bound, and the time the soft vote's work takes at it;
- soft vote: one soft_vote node over every input on val and test, through the graph engine;
- seed graph: the shipped ``vipriors2021`` graph, then once more unchanged (the cache);
- the soft vote and the first seed graph import torch before their clock starts (about 2 s
  here, once per process, printed), as the bound does; the unchanged re-run does not (a cached
  re-run never loads torch, and is timed as a user waits for it);
- curve: soft vote time over 22/44/66 inputs (the inputs of 1, 2, 3 test sizes; val split)
  and over rows/4, rows/2, rows (22 inputs), to show it is linear.

``--store PATH`` keeps the generated store there and reuses it on the next run with the same
sizes; ``--workers`` is passed to ``execute`` for the soft vote and the seed graph. The ratio
soft vote / bound is printed last. Throughput depends on what else the machine runs: the bound
is best of 3; a phase runs once (minutes at full scale).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

LOSSES = ("ce", "taylor_ce")
SIZES = (224, 320, 380)
SPECIALISTS, SPECIALIST_CLASSES = 3, 20
PATTERN_ROWS = 4096  # distinct random rows; each input reads them in an order of its own
RSS_TARGET_MB, CACHE_TARGET_S, BOUND_TARGET = 1536, 2.0, 0.8

SOFT_VOTE = """\
version: 1
fit: {fit}
apply: [{apply}]
nodes:
  {node}:
    combiner: soft_vote
    inputs: {{where: {{loss: [{losses}], test_size: [{sizes}], name: "!cov-*"}}}}
    params: {{weights: uniform}}
output: {node}
"""


def in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh process; its result gains that process's peak RSS."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn: Any, *args: Any) -> dict[str, Any]:
    result = fn(*args)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["workers_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


# --- the synthetic store ------------------------------------------------------------------------


def inputs(backbones: int) -> list[dict[str, Any]]:
    """Producer predictions in a fixed order: sizes outermost, so the first third is 224."""
    return [
        {"backbone": f"b{b:02d}", "loss": loss, "test_size": size}
        for size in SIZES
        for b in range(backbones)
        for loss in LOSSES
    ]


def generate(path: str, rows: int, classes: int, backbones: int, curve: list[int]) -> dict:
    from ensemble_engine.prediction_io import chunk_rows_for
    from ensemble_engine.store import open_store

    start = time.perf_counter()
    st = open_store(path, "w")
    st.set_classes([f"n{k:04d}" for k in range(classes)])
    rng = np.random.default_rng(0)
    sizes = {"val": rows, "test": rows, **{f"rows{r}": r for r in curve}}
    truth = {split: rng.integers(0, classes, n) for split, n in sizes.items()}
    for split, n in sizes.items():
        labels = None if split == "test" else truth[split]  # test: unlabelled, as in a challenge
        st.add_split(split, [f"{split}/{i:06d}" for i in range(n)], labels)
    pattern = (rng.standard_normal((PATTERN_ROWS, classes), dtype=np.float32) * 2).astype(
        np.float16
    )
    step = chunk_rows_for(classes, 2)
    written = 0
    specs = inputs(backbones)
    for i, meta in enumerate(specs):
        name = f"{meta['backbone']}-{meta['loss']}-{meta['test_size']}"
        splits = ["val", "test"] + (
            [s for s in sizes if s.startswith("rows")] if i < len(specs) // 3 else []
        )
        for split in splits:
            accuracy = 0.45 + 0.4 * i / len(specs)
            written += write_input(st, name, split, truth[split], pattern, i, accuracy, step, meta)
    for j in range(SPECIALISTS):
        subset = list(range(j * SPECIALIST_CLASSES, (j + 1) * SPECIALIST_CLASSES))
        names = [st.classes[c] for c in subset] + ["__other__"]
        where = np.full(classes, SPECIALIST_CLASSES)  # store class → specialist column
        where[subset] = np.arange(SPECIALIST_CLASSES)
        meta = {"backbone": "spec", "loss": "ce", "test_size": 224}
        for split in ("val", "test"):
            written += write_input(
                st, f"cov-{j}", split, where[truth[split]], pattern[:, : len(names)],
                100 + j, 0.9, step, meta, names,
            )  # fmt: skip
    st.group.attrs.update({"bench": {"rows": rows, "classes": classes, "backbones": backbones}})
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "gb": written / 1e9}


def write_input(
    st: Any,
    name: str,
    split: str,
    truth: np.ndarray,
    pattern: np.ndarray,
    seed: int,
    accuracy: float,
    step: int,
    meta: dict[str, Any],
    classes: list[str] | None = None,
) -> int:
    """Logits: pattern rows in this input's order, the true class raised on ``accuracy`` of rows."""
    meta = {"source": {"type": "producer", "plugin": "bench"}, **meta}
    with st.prediction_writer(name, split, kind="logits", meta=meta, classes=classes) as w:
        for a in range(0, len(truth), step):
            b = min(len(truth), a + step)
            block = pattern[(np.arange(a, b) * 7919 + seed * 104729) % PATTERN_ROWS]
            hit = np.random.default_rng((seed, a)).random(b - a) < accuracy
            block[np.flatnonzero(hit), truth[a:b][hit]] += np.float16(8.0)
            w.write(block)
    return len(truth) * pattern.shape[1] * 2


# --- the phases ---------------------------------------------------------------------------------


def bound(n_inputs: int, classes: int, threads: int) -> dict:
    """Elements per second of softmax + weighted sum in torch on float32 rows in memory."""
    import torch

    torch.set_num_threads(threads)
    rows = 512
    x = torch.randn(n_inputs, rows, classes)
    w = torch.rand(n_inputs)
    w /= w.sum()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.tensordot(w, torch.softmax(x, dim=2), dims=1)
        best = min(best, time.perf_counter() - t0)
    return {"rate": n_inputs * rows * classes / best}


def run_graph(
    store: str,
    text: str | None,
    name: str,
    force: bool = True,
    workers: int = 1,
    warm: bool = True,
) -> dict:
    """Plan and execute a graph (``text`` or a shipped graph ``name``); seconds of each.

    ``warm`` imports torch first, off the clock (``import_s``): a process pays it once, at its
    first soft vote, and the bound it is compared with is timed after it too.
    """
    from ensemble_engine.graph import execute, load_graph, plan
    from ensemble_engine.store import open_store

    t = time.perf_counter()
    if warm:
        import torch  # noqa: F401

    import_s = time.perf_counter() - t

    st = open_store(store, "a")
    if text is not None:
        path = Path(store).parent / f"{name}.yaml"
        path.write_text(text)
        name = str(path)
    t0 = time.perf_counter()
    p = plan(load_graph(name), st)
    t1 = time.perf_counter()
    results = execute(p, st, force=force, **({"workers": workers} if workers > 1 else {}))
    t2 = time.perf_counter()
    return {
        "import_s": import_s,
        "plan_s": t1 - t0,
        "run_s": t2 - t1,
        "seconds": t2 - t0,
        "nodes": len(results),
        "cached": sum(r.cached for r in results),
        "top1": {r.id: r.metrics.get("val", {}).get("top1") for r in results[-3:]},
    }


def soft_vote_graph(node: str, fit: str, apply: list[str], sizes: tuple[int, ...]) -> str:
    return SOFT_VOTE.format(
        node=node,
        fit=fit,
        apply=", ".join(apply),
        losses=", ".join(LOSSES),
        sizes=", ".join(map(str, sizes)),
    )


# --- the report ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--backbones", type=int, default=11, help="× 2 losses × 3 sizes inputs")
    ap.add_argument("--store", help="keep the generated store here and reuse it")
    ap.add_argument("--keep", action="store_true", help="keep a temporary store")
    ap.add_argument("--no-curve", action="store_true", help="skip the linearity curve")
    ap.add_argument("--workers", type=int, default=1, help="execute(workers=) of the phases")
    args = ap.parse_args()
    rows, k = args.rows, args.classes
    n_in = args.backbones * len(LOSSES) * len(SIZES)
    curve = [] if args.no_curve else [rows // 4, rows // 2]
    work = Path(args.store).parent if args.store else Path(tempfile.mkdtemp(prefix="ee-bench-"))
    store = args.store or str(work / "bench.zarr")
    work.mkdir(parents=True, exist_ok=True)
    want = {"rows": rows, "classes": k, "backbones": args.backbones}
    print(f"load average {os.getloadavg()[0]:.1f} on {multiprocessing.cpu_count()} cores")
    try:
        if _bench_params(store) != want or not _has_curve(store, curve):
            gen = in_child(generate, store, rows, k, args.backbones, curve)
            print(
                f"generated {n_in} inputs + {SPECIALISTS} specialists × [{rows}, {k}] float16 on "
                f"val and test: {gen['gb']:.1f} GB in {gen['seconds']:.1f} s "
                f"({gen['gb'] / gen['seconds']:.2f} GB/s), peak RSS {gen['rss_mb']:.0f} MB"
            )
        else:
            print(f"reusing {store}")
        report(store, rows, k, n_in, curve, args.workers)
    finally:
        if not (args.store or args.keep):
            shutil.rmtree(work, ignore_errors=True)


def _bench_params(store: str) -> dict | None:
    meta = Path(store) / "zarr.json"
    if not meta.exists():
        return None
    return json.loads(meta.read_text()).get("attributes", {}).get("bench")


def _has_curve(store: str, curve: list[int]) -> bool:
    return all((Path(store) / "splits" / f"rows{r}").exists() for r in curve)


def report(store: str, rows: int, k: int, n_in: int, curve: list[int], workers: int) -> None:
    cores = multiprocessing.cpu_count()
    bound_all = in_child(bound, min(n_in, 66), k, cores)
    bound_one = in_child(bound, min(n_in, 66), k, 1)
    rate = max(bound_all["rate"], bound_one["rate"])  # the faster of the two is the bound
    graph = soft_vote_graph("bench_all", "val", ["test"], SIZES)
    soft = in_child(run_graph, store, graph, "all", True, workers)
    seed = in_child(run_graph, store, None, "vipriors2021", True, workers)
    cache = in_child(run_graph, store, None, "vipriors2021", False, 1, False)  # as a user sees
    elements = n_in * rows * k * 2  # every input on val and test
    print(
        f"compute bound (torch softmax + weighted sum, float32 in memory): "
        f"{bound_all['rate'] / 1e9:.3f} G elements/s on {cores} cores, "
        f"{bound_one['rate'] / 1e9:.3f} on one: {elements / rate:.1f} s for the soft vote's work"
    )
    for what, r in (("soft vote", soft), ("seed graph", seed), ("seed graph again", cache)):
        print(
            f"{what:17s} {r['seconds']:8.2f} s (plan {r['plan_s']:.2f} s)  "
            f"{r['nodes']} nodes, {r['cached']} cached  peak RSS {r['rss_mb']:6.0f} MB"
            + (f"; torch imported first in {r['import_s']:.1f} s" if r["import_s"] > 0.05 else "")
            + (f" (+ workers, each <= {r['workers_rss_mb']:.0f} MB)" if workers > 1 else "")
        )
    if curve:
        third = n_in // len(SIZES)  # the inputs of one test size
        print(f"soft vote time over inputs (val, all rows), over rows ({third} inputs):")
        points = [(third * (i + 1), rows, SIZES[: i + 1], "val") for i in range(len(SIZES))]
        points += [(third, r, SIZES[:1], f"rows{r}") for r in curve]
        for n, r, sizes, split in points:
            g = soft_vote_graph(f"bench_{split}_{n}", split, [split], sizes)
            res = in_child(run_graph, store, g, f"curve_{split}_{n}")
            per = res["run_s"] / (n * r * k) * 1e9
            print(f"  inputs {n:3d} rows {r:6d}: {res['run_s']:7.2f} s  {per:.2f} ns/element")
    print(f"load average now {os.getloadavg()[0]:.1f} on {cores} cores")
    rss, again = seed["rss_mb"], cache["seconds"]
    print(
        f"seed graph peak RSS {rss:.0f} MB (target <= {RSS_TARGET_MB} MB): "
        f"{'met' if rss <= RSS_TARGET_MB else 'NOT met'}"
    )
    print(
        f"seed graph cached rerun {again:.2f} s (target <= {CACHE_TARGET_S} s): "
        f"{'met' if again <= CACHE_TARGET_S else 'NOT met'}"
    )
    ratio = elements / soft["run_s"] / rate
    print(
        f"soft vote {elements / soft['run_s'] / 1e9:.3f} G elements/s over {n_in} inputs; "
        f"ratio to the compute bound: {ratio:.2f}x (target >= {BOUND_TARGET}x)"
    )


if __name__ == "__main__":
    main()
