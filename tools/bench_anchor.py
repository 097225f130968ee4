"""The training anchor: ``ee produce`` against timm's own training loop, alternating, one run.

    python tools/bench_anchor.py [--rounds 3] [--seeds 0,1,2] [--epochs 30] [--workers 2]
    python tools/bench_anchor.py --timm-only DIR OUT      # one timm run (what a round starts)

The anchor is timm's ``train.py`` on the embedded digits (50 train + 50 val images per class,
32 px): resnet18, batch 64, 30 epochs, SGD lr 0.05, 3 warm-up epochs then cosine, label
smoothing 0.1, random-resized-crop scale 0.35–1, no flips, 2 loader workers, and timm's
defaults for the rest (colour jitter 0.4, weight decay 2e-5, no AMP on CPU). timm's script is
not shipped in its wheel, so ``timm_run`` follows its CPU code path with timm's own parts:
``create_dataset`` + ``create_loader`` (with its prefetcher: uint8 batches, normalised in the
training process), ``create_optimizer_v2``, ``create_scheduler_v2``, ``LabelSmoothingCrossEntropy``,
a validation pass after every epoch, ``utils.update_summary`` and ``utils.CheckpointSaver``.

The ee side is the equivalent recipe, end to end as a user runs it (training, then the val and
test predictions written to a store)::

    ee produce resnet18-ls --loss-param smoothing=0.1 --set color_jitter=0.4,0.4,0.4,0 \\
        --test-sizes 32

Each round runs both, in alternating order, each in a fresh process timed on the wall clock
from its start to its exit (imports included), so load on the machine hits both sides alike.
Round ``i`` runs both sides with the ``i``-th of ``--seeds`` (cycling): one seed's val top-1
swings by about a point on 500 images, on either side, so the accuracies compared are means
over the rounds. Prints every run, then the median times; the ratio (timm / ee wall time: ≥ 1
means ee took no longer) and both mean accuracies last.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EE_ARGS = [
    "produce", "resnet18-ls", "--loss-param", "smoothing=0.1",
    "--set", "color_jitter=0.4,0.4,0.4,0", "--test-sizes", "32",
]  # fmt: skip


def timm_run(data: str, out: str, epochs: int, workers: int, seed: int = 42) -> None:
    """timm's train.py code path on CPU with the anchor's settings; prints its accuracy."""
    import torch
    from timm import utils
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    utils.random_seed(seed, 0)
    Path(out).mkdir(parents=True, exist_ok=True)
    model = create_model("resnet18", num_classes=10)
    config = resolve_data_config({"img_size": 32}, model=model)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, weight_decay=2e-5, momentum=0.9)
    common = {"input_size": config["input_size"], "batch_size": 64, "use_prefetcher": True,
              "mean": config["mean"], "std": config["std"], "num_workers": workers,
              "device": torch.device("cpu")}  # fmt: skip
    train_loader = create_loader(
        create_dataset("", root=data, split="train", is_training=True, batch_size=64, seed=seed),
        is_training=True, scale=[0.35, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.0, vflip=0.0,
        color_jitter=0.4, interpolation="random", **common,
    )  # fmt: skip
    val_loader = create_loader(
        create_dataset("", root=data, split="val", is_training=False, batch_size=64),
        is_training=False, interpolation=config["interpolation"], crop_pct=config["crop_pct"],
        **common,
    )  # fmt: skip
    train_loss, val_loss = LabelSmoothingCrossEntropy(smoothing=0.1), torch.nn.CrossEntropyLoss()
    args = argparse.Namespace(model="resnet18")
    saver = utils.CheckpointSaver(model=model, optimizer=optimizer, args=args,
                                  checkpoint_dir=out, recovery_dir=out, max_history=10)  # fmt: skip
    scheduler, epochs = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=3, warmup_lr=1e-5,
        min_lr=0, updates_per_epoch=len(train_loader),
    )  # fmt: skip
    best = top1 = None
    for epoch in range(epochs):
        model.train()
        losses = utils.AverageMeter()
        for images, targets in train_loader:
            loss = train_loss(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), images.size(0))
        model.eval()
        meters = [utils.AverageMeter() for _ in range(3)]
        with torch.no_grad():
            for images, targets in val_loader:
                output = model(images)
                acc1, acc5 = utils.accuracy(output, targets, topk=(1, 5))
                values = (val_loss(output, targets), acc1, acc5)
                for meter, value in zip(meters, values, strict=True):
                    meter.update(value.item(), images.size(0))
        metrics = {"loss": meters[0].avg, "top1": meters[1].avg, "top5": meters[2].avg}
        utils.update_summary(epoch, {"loss": losses.avg}, metrics,
                             filename=f"{out}/summary.csv", write_header=epoch == 0)  # fmt: skip
        best, _ = saver.save_checkpoint(epoch, metric=metrics["top1"])
        scheduler.step(epoch + 1, metrics["top1"])
        top1 = metrics["top1"]
    print(f"timm best {best:.1f} final {top1:.1f}")


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:3])}… failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def ee_accuracy(work: Path) -> tuple[float, float]:
    (summary,) = work.glob("runs/*/summary.csv")
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    return max(float(r["val_top1"]) for r in rows), float(rows[-1]["val_top1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="both sides (the anchor: 30)")
    ap.add_argument("--workers", type=int, default=2, help="both sides' loader workers")
    ap.add_argument(
        "--seeds", default="0,1,2",
        help="round i runs both sides with seed i of this list, cycling (one seed's accuracy "
        "swings by about a point on 500 val images; the means are compared)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # --timm-only's
    ap.add_argument("--timm-only", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.timm_only:
        timm_run(*args.timm_only, epochs=args.epochs, workers=args.workers, seed=args.seed)
        return
    from ee_data import open_digits

    data = str(open_digits().root)  # the embedded default, as `ee produce` trains on
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["--epochs", str(args.epochs), "--workers", str(args.workers)]
    times: dict[str, list[float]] = {"timm": [], "ee": []}
    accuracy: dict[str, list[tuple[float, float]]] = {"timm": [], "ee": []}
    for i in range(args.rounds):
        seed = seeds[i % len(seeds)]
        for side in ("timm", "ee") if i % 2 == 0 else ("ee", "timm"):
            with tempfile.TemporaryDirectory(prefix="ee-anchor-") as tmp:
                work = Path(tmp)
                if side == "timm":
                    cmd = [sys.executable, __file__, "--timm-only", data, str(work / "out")]
                    seconds, out = timed([*cmd, *common, "--seed", str(seed)], work)
                    words = out.split()  # "timm best B final F"
                    accuracy[side].append((float(words[2]), float(words[4])))
                else:
                    ee = [str(Path(sys.executable).with_name("ee")), *EE_ARGS, *common]
                    seconds, _ = timed([*ee, "--seed", str(seed)], work)
                    accuracy[side].append(ee_accuracy(work))
            times[side].append(seconds)
            best, final = accuracy[side][-1]
            print(f"round {i + 1} {side:4s} seed {seed} {seconds:6.1f} s  val top-1 best/final "
                  f"{best:.1f}/{final:.1f}%", flush=True)  # fmt: skip
    med = {side: statistics.median(t) for side, t in times.items()}
    acc = {side: [statistics.mean(a) for a in zip(*runs, strict=True)]
           for side, runs in accuracy.items()}  # fmt: skip
    used = ",".join(str(seeds[i % len(seeds)]) for i in range(args.rounds))
    print(f"median wall time: timm {med['timm']:.1f} s, ee {med['ee']:.1f} s")
    print(
        f"anchor ratio (timm / ee wall time): {med['timm'] / med['ee']:.2f}x (target >= 1.0x); "
        f"mean val top-1 best/final over seeds {used}: ee {acc['ee'][0]:.1f}/"
        f"{acc['ee'][1]:.1f}%, timm {acc['timm'][0]:.1f}/{acc['timm'][1]:.1f}% (target: within "
        "0.5 point)"
    )


if __name__ == "__main__":
    main()
