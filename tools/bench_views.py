"""The random TTA views on a batch: ee's batched views against torchvision applied per image.

    python tools/bench_views.py [--sizes 32,224] [--batch 64] [--repeats 20] [--device cpu]
                                [--threads 1]

``rotate`` and ``color_jitter`` (with a hue shift, the costliest setting) draw one parameter per
image. torchvision's functional ops take one parameter per call, so the straightforward way
(and ee's before ``ee_tta.batched``) is a loop over the batch with the parameters read back to
the host: on a GPU that is a few kernel launches per image and a wait for the device per batch.
Both sides here apply the same parameters to the same batch; the script prints, per view and
size, the time of each side (best of ``--repeats``), the aten ops each dispatches per batch as
a GPU runs them (the kernels it launches; on a CPU the batched views work in slices of a few
images at large sizes, to stay in cache), and last the ratio (per-image time / batched time;
above 1: the batched view is faster).

On a CPU with one thread the two do the same arithmetic, so the time ratio mostly reflects
memory traffic (a whole batch per op against one image at a time); the op count is what
carries over to a GPU, where each op is a launch of a few microseconds.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from ee_tta import batched, view_generator
from ee_tta.views import ColorJitter, Rotate, from_pixels, to_pixels
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode

JITTER = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
ROTATE = Rotate(degrees=10)


def draw(n: int, low: float, high: float, generator: torch.Generator) -> list[float]:
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).tolist()  # read back to the host, as a per-image loop must


def rotate_per_image(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    angles = draw(len(images), -ROTATE.degrees, ROTATE.degrees, generator)
    return torch.stack(
        [
            TF.rotate(image, a, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
            for image, a in zip(images, angles, strict=True)
        ]
    )


def jitter_per_image(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, v = len(images), JITTER
    b, c, s = (draw(n, 1 - x, 1 + x, generator) for x in (v.brightness, v.contrast, v.saturation))
    h = draw(n, -v.hue, v.hue, generator)
    out = []
    for i, image in enumerate(to_pixels(images, v.mean, v.std).clamp(0.0, 1.0)):
        image = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(image, b[i]), c[i]), s[i]
        )
        out.append(TF.adjust_hue(image, h[i]))
    return from_pixels(torch.stack(out), v.mean, v.std)


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def best_time(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: allocator, kernels
    best = float("inf")
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        fn()
        wait()
        best = min(best, time.perf_counter() - start)
    return best


def ops_per_batch(fn: Callable[[], torch.Tensor]) -> int:
    """The aten ops ``fn`` dispatches, with the whole batch at once as on a GPU (no CPU slices)."""
    chunk_bytes, batched.CPU_CHUNK_BYTES = batched.CPU_CHUNK_BYTES, 1 << 62
    try:
        with CountOps() as mode:
            fn()
    finally:
        batched.CPU_CHUNK_BYTES = chunk_bytes
    return sum(mode.ops.values())


def views_benchmark(sizes: Sequence[int], batch: int, repeats: int, device: str) -> dict[str, Any]:
    """Each random view at each size, batched and per image: times, ops, ratios (printed too)."""
    on = torch.device(device)
    cases = {"rotate": (ROTATE, rotate_per_image), "color_jitter": (JITTER, jitter_per_image)}
    rows = []
    print(f"{'view':<13}{'size':>5}  {'batched':>10} {'per image':>10}  ops/batch  ratio")
    for size in sizes:
        images = torch.randn(batch, 3, size, size, device=on)
        for name, (view, per_image) in cases.items():
            ours, theirs = (
                functools.partial(lambda fn, x, key: fn(x, view_generator(0, key, device=on)),
                                  fn, images, name)
                for fn in (view, per_image)
            )  # fmt: skip
            assert torch.allclose(ours(), theirs(), atol=1e-3), f"{name} differs"
            row = {
                "view": name, "size": size,
                "batched_s": best_time(ours, on, repeats),
                "per_image_s": best_time(theirs, on, repeats),
                "batched_ops": ops_per_batch(ours), "per_image_ops": ops_per_batch(theirs),
            }  # fmt: skip
            row["ratio"] = row["per_image_s"] / row["batched_s"]
            rows.append(row)
            print(
                f"{name:<13}{size:>5}  {row['batched_s'] * 1e3:>8.2f}ms"
                f" {row['per_image_s'] * 1e3:>8.2f}ms"
                f"  {row['batched_ops']:>4}/{row['per_image_ops']:<5} {row['ratio']:.2f}x"
            )
    ratio = torch.tensor([r["ratio"] for r in rows]).log().mean().exp().item()
    return {"rows": rows, "ratio": ratio, "batch": batch, "device": str(on)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="32,224", help="image sizes, comma-separated")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    res = views_benchmark(sizes, args.batch, args.repeats, args.device)
    print(f"device {res['device']}, batch {res['batch']}: per-image / batched time, geometric "
          f"mean {res['ratio']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
