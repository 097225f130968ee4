"""The training loop's own overhead: ``ee_timm.train.train`` versus a plain hand-written loop.

    python tools/bench_train.py [--backbone resnet10t] [--epochs 2] [--repeats 3] [--workers 0]
                                [--threads 1]
    python tools/bench_train.py --device cuda --amp --channels-last   # on a GPU machine

Both sides train the same timm model (built by the same factories, so from the same initial
weights), with the same loss, optimiser, schedule, batches and data loaders (``ee_timm.loaders``
over ``ee_timm.transforms``) on the digits at 32 px, and validate on the val split after every
epoch. Only the loop differs: the engine adds its divergence check (a read of the loss at
every step on CPU, every 50 steps on CUDA), progress bars (drawn to an off-screen terminal, so
they cost what they cost live), top-1/top-5/loss metrics, and ``last.pth``/``best.pth``
checkpoints and ``summary.csv`` (written by a background thread; the run waits for the last
epoch's before it ends, and so does the timing). The engine keeps the validation batches after
the first epoch (``ee_timm.loaders.ReplayBatches``) where the plain loop, as a hand-written one
does, reads its validation loader every epoch. On CPU both
runs end with the same weights, which the script checks: the work is the same, the time apart
is the engine's. Runs alternate (engine, plain, plain, engine, ...) and the best of N counts,
so background load on the machine hits both sides alike; each is timed on the wall clock and in
CPU seconds. ``--threads 1`` (the default) runs torch on one thread: on a shared 2-core machine
two intra-op threads spin-wait for each other whenever a neighbour holds a core, which makes
them 3-4x slower than one and the timings meaningless.

With ``--device cuda --amp --channels-last`` it also measures the mixed-precision gain on
synthetic batches already on the GPU (resnet50, 224 px, batch 128 by default): the engine's
AMP + channels-last step against a plain float32 step. On a machine without CUDA it says so
and measures the CPU loop only. Prints the ratios last (target >= 0.95x for the loop on CPU,
>= 1.5x for AMP on a GPU).
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ee_data import ImageFolderSource, write_digits
from ee_timm import checkpoint as ck
from ee_timm.builders import build_model, build_optimizer, build_scheduler
from ee_timm.loaders import eval_loader, train_loader
from ee_timm.recipe import Recipe, resolve_recipe
from ee_timm.session import TrainingSession
from ee_timm.train import train
from ee_timm.transforms import eval_transform, train_transform
from rich.console import Console

from ensemble_engine.losses import create_loss

Timer = Callable[[], float]


def clock(device: torch.device) -> Timer:
    """``time.perf_counter`` that first waits for the device's queued work."""
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def digits_recipe(backbone: str, overrides: dict[str, Any]) -> Recipe:
    """The ``digits`` profile recipe (32 px, batch 64) with ``overrides``."""
    return resolve_recipe(f"{backbone}-ce", overrides, defaults="digits")


# --- the two loops ----------------------------------------------------------------------------


def engine_run(recipe: Recipe, data: ImageFolderSource, run_dir: Path) -> None:
    """``ee produce``'s loop, writing ``run_dir``."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    train(
        recipe, data.samples("train"), data.samples("val"), data.classes, run_dir, console=console
    )


def plain_run(recipe: Recipe, data: ImageFolderSource) -> dict[str, torch.Tensor]:
    """A hand-written loop doing the engine's work and nothing else; returns the final weights.

    It seeds and builds exactly as the engine does, then: forward, loss, backward, step; top-1
    on the val split after each epoch; the epoch's loss read once per epoch (no per-step sync).
    """
    device = torch.device(recipe.device)
    cuda = device.type == "cuda"
    channels_last, amp = cuda and recipe.channels_last, cuda and recipe.amp
    ck.seed_everything(recipe.seed)
    model = build_model(recipe, len(data.classes)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe, model)
    scheduler = build_scheduler(recipe, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = create_loss(recipe.loss, **recipe.loss_params).to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    loader = train_loader(
        data.samples("train"),
        train_transform(recipe),
        batch_size=recipe.batch_size,
        workers=recipe.workers,
        generator=generator,
        pin_memory=cuda,
    )
    val_loader = eval_loader(
        data.samples("val"),
        eval_transform(recipe.img_size, recipe.crop_pct),
        batch_size=recipe.batch_size,
        workers=recipe.workers,
        pin_memory=cuda,
    )
    memory = torch.channels_last if channels_last else torch.contiguous_format
    for epoch in range(recipe.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for images, targets in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
        model.eval()
        correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad():
            for images, targets in val_loader:
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    logits = model(images.to(device))
                correct += (logits.argmax(1) == targets.to(device)).sum()
        loss_sum.item(), correct.item()  # the epoch's numbers, as a plain loop would log them
        scheduler.step(epoch + 1)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (loader workers)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def compare_loops(
    recipe: Recipe, data: ImageFolderSource, work: Path, repeats: int
) -> dict[str, Any]:
    """Best-of-``repeats`` wall and CPU seconds of each loop, alternating which goes first."""
    tick = clock(torch.device(recipe.device))
    plain_run(recipe.replace(epochs=1), data)  # warm-up: imports, allocator, kernel caches
    wall: dict[str, list[float]] = {"engine": [], "plain": []}
    cpu: dict[str, list[float]] = {"engine": [], "plain": []}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for rep in range(repeats):
        for side in ("engine", "plain") if rep % 2 == 0 else ("plain", "engine"):
            cpu_start, start = cpu_seconds(), tick()
            if side == "engine":
                engine_run(recipe, data, work / f"run-{rep}")
            else:
                weights[side] = plain_run(recipe, data)
            wall[side].append(tick() - start)
            cpu[side].append(cpu_seconds() - cpu_start)
            if side == "engine":
                weights[side] = ck.load_checkpoint(work / f"run-{rep}" / "last.pth")["model"]
    best = {
        f"{side}_{what}": min(t[side]) for side in wall for what, t in (("s", wall), ("cpu_s", cpu))
    }
    return {
        **best,
        "all_s": wall,
        "all_cpu_s": cpu,
        "ratio": best["plain_s"] / best["engine_s"],
        "cpu_ratio": best["plain_cpu_s"] / best["engine_cpu_s"],
        "max_weight_diff": max_weight_difference(weights["engine"], weights["plain"]),
    }


# --- mixed precision on a GPU -----------------------------------------------------------------


class _NoProgress:
    def batch(self, loss: float, lr: float, img_s: float) -> None:
        pass


def plain_steps(recipe: Recipe, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds for a plain float32 loop over ``batches`` (no AMP, contiguous layout)."""
    device = torch.device(recipe.device)
    tick = clock(device)
    model = build_model(recipe, 1000).to(device).train()
    optimizer = build_optimizer(recipe, model)
    loss_fn = torch.nn.CrossEntropyLoss()

    def steps(part: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for images, targets in part:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    steps(batches[:5])  # warm-up: cuDNN algorithms, allocator
    start = tick()
    steps(batches)
    return tick() - start


def engine_steps(recipe: Recipe, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds for the engine's training epoch (``recipe``'s AMP and layout) over ``batches``."""
    device = torch.device(recipe.device)
    tick = clock(device)
    run = TrainingSession(recipe, 1000, device)
    run.train_epoch(batches[:5], 0, _NoProgress())  # warm-up: cuDNN algorithms, autocast caches
    start = tick()
    run.train_epoch(batches, 0, _NoProgress())
    return tick() - start


def amp_speedup(backbone: str, size: int, batch: int, steps: int, device: str) -> dict[str, Any]:
    """Plain float32 versus the engine's AMP + channels-last on synthetic batches on ``device``.

    The batches are made on the device up front, so loading images does not bound either side.
    Also times the engine in float32, which separates AMP's gain from the engine's overhead.
    """
    base = resolve_recipe(
        f"{backbone}-ce",
        {"img_size": size, "batch_size": batch, "device": device},
        defaults="imagenet",
    )
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device, generator=gen)
    targets = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    batches = [(images, targets)] * steps
    fp32 = base.replace(amp=False, channels_last=False)
    out = {
        "plain_fp32_s": plain_steps(fp32, batches),
        "engine_fp32_s": engine_steps(fp32, batches),
        "engine_amp_cl_s": engine_steps(base.replace(amp=True, channels_last=True), batches),
    }
    images_done = batch * steps
    out.update({f"{k[:-2]}_img_s": images_done / v for k, v in list(out.items())})
    out["ratio"] = out["plain_fp32_s"] / out["engine_amp_cl_s"]
    out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    out["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return out


# --- the script -------------------------------------------------------------------------------


def loop_benchmark(
    *,
    backbone: str = "resnet10t",
    epochs: int = 2,
    repeats: int = 3,
    workers: int = 0,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    img_size: int = 32,
    per_class: int = 50,
) -> dict[str, Any]:
    """Engine versus plain loop on freshly written digits; the numbers as a dict.

    ``img_size`` is the training size (the 32-pixel digits are upscaled by the random resized
    crop) and ``per_class`` the train and val images per digit: on a GPU, the defaults make
    epochs of a fraction of a second, where the per-epoch work both loops share (validation)
    and the engine's own (checkpoints, summary) weigh far more than in any real run.
    """
    work = Path(tempfile.mkdtemp(prefix="ee-bench-train-"))
    try:
        write_digits(work / "digits", train_per_class=per_class, val_per_class=per_class)
        data = ImageFolderSource(work / "digits")
        recipe = digits_recipe(
            backbone,
            {
                "epochs": epochs,
                "workers": workers,
                "device": device,
                "amp": amp,
                "img_size": img_size,
                "set": {"channels_last": channels_last},
            },
        )
        result = compare_loops(recipe, data, work, repeats)
        result.update(
            backbone=backbone,
            epochs=epochs,
            workers=workers,
            device=device,
            amp=recipe.amp,
            channels_last=recipe.channels_last,
            img_size=recipe.img_size,
            train_images=len(data.samples("train")),
            val_images=len(data.samples("val")),
        )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--img-size", type=int, default=32, help="training size (digits upscaled)")
    ap.add_argument("--per-class", type=int, default=50, help="train and val images per digit")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--amp", action="store_true", help="compare AMP with float32 (CUDA only)")
    ap.add_argument("--channels-last", action="store_true", help="channels-last (CUDA only)")
    ap.add_argument("--amp-backbone", default="resnet50")
    ap.add_argument("--amp-size", type=int, default=224)
    ap.add_argument("--amp-batch", type=int, default=128)
    ap.add_argument("--amp-steps", type=int, default=30)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA comparison skipped: no CUDA device here; measuring the loop on CPU")
        device = "cpu"
    gpu = device == "cuda"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if gpu else "")
    )
    loop = loop_benchmark(
        backbone=args.backbone,
        epochs=args.epochs,
        repeats=args.repeats,
        workers=args.workers,
        device=device,
        amp=gpu and args.amp,
        channels_last=gpu and args.channels_last,
        img_size=args.img_size,
        per_class=args.per_class,
    )
    print(
        f"{args.backbone}, digits {args.img_size} px, {loop['train_images']} train + "
        f"{loop['val_images']} val images, {args.epochs} epochs, batch 64, workers {args.workers}, "
        f"best of {args.repeats} (alternating)"
    )
    for side in ("engine", "plain"):
        runs = ", ".join(f"{t:.2f}" for t in loop["all_s"][side])
        print(
            f"  {side:6s} best {loop[f'{side}_s']:7.2f} s, {loop[f'{side}_cpu_s']:7.2f} CPU-s"
            f"   (wall: {runs})"
        )
    print(
        f"  final weights differ by at most {loop['max_weight_diff']:.3g}"
        + (" (identical runs)" if loop["max_weight_diff"] == 0 else "")
    )
    if args.amp and not gpu:
        print("AMP + channels-last comparison skipped: it needs a CUDA device")
    print(
        f"train loop ratio (plain / engine time): wall {loop['ratio']:.3f}x, CPU"
        f" {loop['cpu_ratio']:.3f}x (target >= 0.95x)"
    )
    if args.amp and gpu:
        res = amp_speedup(args.amp_backbone, args.amp_size, args.amp_batch, args.amp_steps, device)
        print(
            f"{args.amp_backbone} {args.amp_size} px, batch {args.amp_batch}, {args.amp_steps}"
            f" steps on synthetic batches (cudnn tf32 {res['cudnn_allow_tf32']})"
        )
        for key in ("plain_fp32", "engine_fp32", "engine_amp_cl"):
            print(f"  {key:14s} {res[key + '_s']:7.2f} s  {res[key + '_img_s']:8.0f} img/s")
        print(
            f"AMP ratio (plain fp32 time / engine AMP+channels-last time): {res['ratio']:.2f}x "
            "(target >= 1.5x)"
        )


if __name__ == "__main__":
    main()
