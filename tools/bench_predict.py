"""TTA prediction overhead: ``ee_tta.predict_sizes`` into a store versus bare forward passes.

    python tools/bench_predict.py [--backbone resnet10t] [--sizes 32,46,54] [--repeats 3]
                                  [--per-class 20] [--batch 64] [--workers 0] [--device cpu]
                                  [--threads 1]

Both sides run the same model (untrained: the weights do not change the time) over the digits'
val split (``--per-class`` images per digit) at each test size, through the same five views
(identity, hflip, rotate, color_jitter, gauss_noise). The bare side starts from the batches
already decoded, resized, cropped and normalised by the same eval transform (on the device),
and times only the view ops and the model. The predict side is everything ``ee produce`` does,
through the same call (``predict_sizes``, all sizes at once): reading the split once and
transforming each image to every size, seeding each view's generator, the views and the model,
merging the views, and streaming the merged float16 scores into a prediction store (one writer
per size: lock, metadata, ``complete``). The two sides alternate and the best of N counts, so
background load hits both alike. Prints the ratio (bare time / predict time) last; target
>= 0.9x.

The default sizes are the digits recipe's test sizes for its 32-pixel training (32, 46, 54),
where the model is cheapest and any overhead shows most; ``--sizes 224,320,380`` gives the
seed's sizes. Times are wall clock and CPU seconds. ``--threads 1`` (the default) runs torch
on one thread: on a shared 2-core machine two intra-op threads spin-wait for each other
whenever a neighbour holds a core, which makes them 3-4x slower than one and the timings
meaningless.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from ee_data import ImageFolderSource, write_digits
from ee_tta import build_views, eval_config, predict_sizes
from ee_tta.evaldata import SplitImages
from torch.utils.data import DataLoader

from ensemble_engine.data import register_splits
from ensemble_engine.store import PredictionStore, open_store

VIEWS = ("identity", "hflip", "rotate", "color_jitter", "gauss_noise")
SPLIT = "val"


def clock(device: torch.device) -> Callable[[], float]:
    """``time.perf_counter`` that first waits for the device's queued work."""
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (loader workers)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def reap_workers(timeout_s: float = 30.0) -> None:
    """Wait until the loader workers that ``predict_sizes`` let go have exited and been reaped,
    so that their CPU time is counted (``RUSAGE_CHILDREN`` counts reaped children only)."""
    deadline = time.monotonic() + timeout_s
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)


def prepared_batches(
    model: torch.nn.Module, source: ImageFolderSource, size: int, batch: int, device: torch.device
) -> list[torch.Tensor]:
    """The split's images at ``size`` as the predictor's eval transform makes them, on device."""
    transform = eval_config(model).transform(size)
    loader = DataLoader(SplitImages(source.samples(SPLIT), transform), batch_size=batch)
    return [images.to(device) for images in loader]


def bare_forward(
    model: torch.nn.Module, batches: Mapping[int, Sequence[torch.Tensor]], views: Mapping[str, Any]
) -> None:
    """Each view of each batch through the model: nothing but the view ops and the forwards."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    generators = {
        label: torch.Generator(device=device).manual_seed(i) for i, label in enumerate(views)
    }
    with torch.inference_mode():
        for size_batches in batches.values():
            for images in size_batches:
                for label, view in views.items():
                    x = view(images, generators[label])
                    if cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, enabled=cuda):
                        model(x)


def full_predict(
    model: torch.nn.Module,
    source: ImageFolderSource,
    store: PredictionStore,
    sizes: Sequence[int],
    batch: int,
    workers: int,
    device: torch.device,
) -> list[str]:
    """``predict_sizes`` over the split at every size (``bench-s<size>``), replacing the
    previous pass's predictions."""
    return predict_sizes(
        model,
        source,
        [SPLIT],
        list(sizes),
        list(VIEWS),
        store=store,
        name="bench",
        batch_size=batch,
        device=device,
        workers=workers,
        replace=True,
    )


def predict_benchmark(
    *,
    backbone: str = "resnet10t",
    sizes: Sequence[int] = (32, 46, 54),
    repeats: int = 3,
    per_class: int = 20,
    batch: int = 64,
    workers: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Bare forwards versus the full predict path on freshly written digits; a dict of numbers."""
    dev = torch.device(device)
    tick = clock(dev)
    work = Path(tempfile.mkdtemp(prefix="ee-bench-predict-"))
    try:
        write_digits(work / "digits", val_per_class=per_class)
        source = ImageFolderSource(work / "digits")
        store = open_store(work / "bench.zarr", "w")
        register_splits(store, source)
        torch.manual_seed(0)
        model = timm.create_model(backbone, pretrained=False, num_classes=len(source.classes))
        model.eval().to(dev)
        if dev.type == "cuda":
            model.to(memory_format=torch.channels_last)
        cfg = eval_config(model)
        views = build_views(list(VIEWS), mean=cfg.mean, std=cfg.std)
        batches = {s: prepared_batches(model, source, s, batch, dev) for s in sizes}
        bare_forward(model, batches, views)  # warm-up: kernels for every size
        wall: dict[str, list[float]] = {"bare": [], "predict": []}
        cpu: dict[str, list[float]] = {"bare": [], "predict": []}
        for rep in range(repeats):
            for side in ("bare", "predict") if rep % 2 == 0 else ("predict", "bare"):
                cpu_start, start = cpu_seconds(), tick()
                if side == "bare":
                    bare_forward(model, batches, views)
                else:
                    ids = full_predict(model, source, store, sizes, batch, workers, dev)
                wall[side].append(tick() - start)
                reap_workers()  # outside the wall time: the predictor does not wait for this
                cpu[side].append(cpu_seconds() - cpu_start)
        rows = store.read(ids[0].split("/")[0], SPLIT).shape[0]
        best = {f"{k}_s": min(v) for k, v in wall.items()}
        best.update({f"{k}_cpu_s": min(v) for k, v in cpu.items()})
        return {
            "backbone": backbone,
            "sizes": list(sizes),
            "views": list(VIEWS),
            "batch": batch,
            "workers": workers,
            "device": device,
            "images": len(source.samples(SPLIT)),
            "rows_written": rows,
            "all_s": wall,
            "all_cpu_s": cpu,
            **best,
            "ratio": best["bare_s"] / best["predict_s"],
            "cpu_ratio": best["bare_cpu_s"] / best["predict_cpu_s"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--sizes", default="32,46,54")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=20, help="val images per digit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; measuring on CPU")
        device = "cpu"
    sizes = [int(s) for s in args.sizes.split(",")]
    res = predict_benchmark(
        backbone=args.backbone,
        sizes=sizes,
        repeats=args.repeats,
        per_class=args.per_class,
        batch=args.batch,
        workers=args.workers,
        device=device,
    )
    print(
        f"{args.backbone}, {res['images']} digits x sizes {sizes} x {len(VIEWS)} views, batch "
        f"{args.batch}, workers {args.workers}, {device}, {torch.get_num_threads()} threads, "
        f"best of {args.repeats} (alternating)"
    )
    for side, what in (
        ("bare", "views + model on prepared tensors"),
        ("predict", "predict_sizes into a store"),
    ):
        runs = ", ".join(f"{t:.2f}" for t in res["all_s"][side])
        print(
            f"  {side:7s} best {res[side + '_s']:7.2f} s, {res[side + '_cpu_s']:7.2f} CPU-s"
            f"   {what} (wall: {runs})"
        )
    print(
        f"predict ratio (bare / predict_sizes time): wall {res['ratio']:.3f}x, CPU"
        f" {res['cpu_ratio']:.3f}x (target >= 0.9x)"
    )


if __name__ == "__main__":
    main()
