"""Training data throughput at 224 px: the engine's seeded loader versus torchvision ImageFolder.

    python tools/bench_data.py [--workers 0,1,2,3] [--repeats 4] [--per-class 30] [--batch 64]
                               [--threads 1]

The digits are written as 224-pixel PNGs (nearest-neighbour upscaled), so each image is a real
224 x 224 decode rather than a 32-pixel one stretched inside the transform. Both loaders apply
the same transform object, the seed recipe's augmentation at 224 px (``ee_timm.transforms``
with the ``imagenet`` profile: random resized crop, flips, colour jitter, AutoAugment, Gaussian
noise, normalisation), with the same batch size, shuffling, ``drop_last`` and worker settings
(persistent workers, as the engine's loader has them). What differs is the engine's part: the
sampler that hands every sample its own augmentation seed and the dataset that seeds the global
generators around each transform (``ee_timm.loaders``).

A pass runs from creating the loader's iterator (worker start-up included) to its last batch;
it is timed on the wall clock and in CPU seconds (this process and its reaped workers), since
on a shared machine the wall clock mostly measures the neighbours. ``--threads 1`` (the
default) gives the main process one torch thread, as every worker has: with two, the per-image
tensor ops of ``--workers 0`` spin-wait for each other on a loaded 2-core machine and run ~10x
slower. For each worker count the
two loaders alternate and the best of N passes counts. The seeding the engine adds is also
timed on its own, per image, against the decode and augmentation it wraps. Prints images/s per
worker count and, last, the ratios (engine / torchvision) at the worker count where the
engine's loader is fastest (target >= 1.0x).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ee_data import ImageFolderSource, load_image, write_digits
from ee_timm.loaders import seeded, train_loader
from ee_timm.recipe import resolve_recipe
from ee_timm.transforms import train_transform
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

SIZE = 224
SIDES = ("engine", "torchvision")


def seed_transform(size: int = SIZE) -> Callable:
    """The seed recipe's training augmentation at ``size`` pixels."""
    return train_transform(resolve_recipe("resnet50-ce", {"img_size": size}, defaults="imagenet"))


def engine_loader(
    root: Path, transform: Callable, batch: int, workers: int, seed: int
) -> DataLoader:
    samples = ImageFolderSource(root).samples("train")
    generator = torch.Generator().manual_seed(seed)
    return train_loader(samples, transform, batch_size=batch, workers=workers, generator=generator)


def torchvision_loader(
    root: Path, transform: Callable, batch: int, workers: int, seed: int
) -> DataLoader:
    dataset = ImageFolder(root / "train", transform=transform)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=len(dataset) > batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_pass(make: Callable[[], DataLoader], seed: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images) for one pass over a freshly made loader.

    ``seed`` also seeds the global generators that augment in the main process (workers=0),
    so each pass of either loader draws fresh augmentations: AutoAugment's operations differ
    in cost, and a loader that repeated one draw would be compared against the luckiest of N.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    loader = make()
    cpu, start = cpu_seconds(), time.perf_counter()
    n = sum(len(images) for images, _ in loader)
    wall = time.perf_counter() - start
    del loader  # joins the persistent workers, so their CPU time is counted, and frees the cores
    return wall, cpu_seconds() - cpu, n


def sweep(root: Path, workers: list[int], repeats: int, batch: int) -> list[dict[str, Any]]:
    """Both loaders at each worker count: best of ``repeats`` alternating passes.

    Pass ``rep`` of both loaders uses seed ``rep`` (shuffle, augmentation seeds, worker seeds).
    """
    transform = seed_transform()
    makers = {"engine": engine_loader, "torchvision": torchvision_loader}
    one_pass(lambda: engine_loader(root, transform, batch, 0, 0), 0)  # warm-up: page cache
    rows = []
    for w in workers:
        row: dict[str, Any] = {"workers": w}
        for rep in range(repeats):
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                make = makers[side]
                wall, cpu, n = one_pass(
                    lambda make=make, w=w, rep=rep: make(root, transform, batch, w, rep), rep
                )
                row[f"{side}_img_s"] = max(row.get(f"{side}_img_s", 0.0), n / wall)
                row[f"{side}_img_cpu_s"] = max(row.get(f"{side}_img_cpu_s", 0.0), n / cpu)
        row["ratio"] = row["engine_img_s"] / row["torchvision_img_s"]
        row["cpu_ratio"] = row["engine_img_cpu_s"] / row["torchvision_img_cpu_s"]
        rows.append(row)
    return rows


def seeding_cost(root: Path, n: int = 200) -> dict[str, float]:
    """Per image, in ms: the engine's seeding in a worker and in the main process, and the work
    it wraps. Timed with one torch thread, as in a loader's worker process.

    A worker only seeds torch, numpy and ``random``; the main process (``workers=0``) also
    saves and restores their states around each image (``ee_timm.loaders.seeded``).
    """
    paths = sorted((root / "train").rglob("*.png"))[:20]
    transform = seed_transform()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for i in range(n):
        torch.default_generator.manual_seed(i)
        np.random.seed(i)
        random.seed(i)
    worker_ms = (time.perf_counter() - start) * 1000 / n
    start = time.perf_counter()
    for i in range(n):
        with seeded(i):
            pass
    main_ms = (time.perf_counter() - start) * 1000 / n
    start = time.perf_counter()
    for i in range(n // 4):
        transform(load_image(paths[i % len(paths)]))
    work_ms = (time.perf_counter() - start) * 1000 / (n // 4)
    torch.set_num_threads(threads)
    return {
        "worker_seed_ms": worker_ms,
        "main_seed_ms": main_ms,
        "decode_augment_ms": work_ms,
        "worker_bound": work_ms / (work_ms + worker_ms),
        "main_bound": work_ms / (work_ms + main_ms),
    }


def data_benchmark(
    *, workers: list[int], repeats: int = 4, per_class: int = 30, batch: int = 64
) -> dict[str, Any]:
    """The worker sweep on freshly written 224-pixel digits; the numbers as a dict."""
    work = Path(tempfile.mkdtemp(prefix="ee-bench-data-"))
    try:
        root = work / "digits"
        summary = write_digits(root, train_per_class=per_class, val_per_class=0, size=SIZE)
        rows = sweep(root, workers, repeats, batch)
        fastest = max(rows, key=lambda r: r["engine_img_s"])
        return {
            "images": summary["counts"]["train"],
            "rows": rows,
            "best_workers": fastest["workers"],
            "ratio": fastest["ratio"],
            "cpu_ratio": fastest["cpu_ratio"],
            "seeding": seeding_cost(root),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="0,1,2,3", help="worker counts to sweep, e.g. 0,2")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=30, help="training images per digit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # torch warns when workers outnumber the cores; the sweep does that on purpose
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    workers = [int(w) for w in args.workers.split(",")]
    res = data_benchmark(
        workers=workers, repeats=args.repeats, per_class=args.per_class, batch=args.batch
    )
    print(
        f"{res['images']} PNG digits at {SIZE} px, seed augmentation, batch {args.batch}, "
        f"{torch.get_num_threads()} torch threads, best of {args.repeats} (alternating)"
    )
    print(
        "  workers | images/s: engine  torchvision  ratio | per CPU-s: engine  torchvision  ratio"
    )
    for r in res["rows"]:
        print(
            f"  {r['workers']:7d} | {r['engine_img_s']:16.1f} {r['torchvision_img_s']:12.1f}"
            f" {r['ratio']:6.3f} | {r['engine_img_cpu_s']:17.1f} {r['torchvision_img_cpu_s']:12.1f}"
            f" {r['cpu_ratio']:6.3f}"
        )
    s = res["seeding"]
    print(
        f"  the engine's seeding per image: {s['worker_seed_ms'] * 1000:.0f} us in a worker, "
        f"{s['main_seed_ms'] * 1000:.0f} us in the main process, against "
        f"{s['decode_augment_ms']:.2f} ms of decode + augmentation: at most "
        f"{s['worker_bound']:.3f}x with workers, {s['main_bound']:.3f}x without"
    )
    print(
        f"data ratio at {res['best_workers']} workers, the engine's fastest (engine / torchvision):"
        f" images/s {res['ratio']:.3f}x, images per CPU-s {res['cpu_ratio']:.3f}x (target >= 1.0x)"
    )


if __name__ == "__main__":
    main()
