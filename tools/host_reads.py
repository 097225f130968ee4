"""Where `ee produce` reads tensors back to the host: on a GPU, each such read waits for it.

    python tools/host_reads.py [--epochs 2] [--batch 16] [--per-class 20]
                               [--tta identity,hflip,rotate,color_jitter,gauss_noise]

Runs ``ee produce resnet10t-ce`` in this process on a small digits set (CPU, no workers), with
every tensor method that hands values to Python (``item``, ``tolist``, ``numpy``, ``cpu``,
``bool``/``float``/``int``/``index``) wrapped to count its callers by ee source line. On a CPU
tensor most of these dispatch no op, so an op profiler cannot see them; on CUDA every one of
them is a wait for the GPU (``cpu``/``numpy`` of a pinned non-blocking copy excepted). Reads in
the data loader's transforms run on CPU images and cost nothing on a GPU; the table marks them.

Prints each reading line with its count, then the reads per training step and per prediction
batch outside the loader (what a GPU would wait on), last.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import torch

METHODS = ("tolist", "item", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
ROOT = str(Path(__file__).resolve().parents[1]) + os.sep
LOADER_FILES = ("plugins/ee_timm/loaders.py", "plugins/ee_timm/transforms.py", "plugins/ee_data/")
# Reads that a CPU run makes but a GPU run makes differently, by (file, function)
ON_A_GPU = {
    ("plugins/ee_losses/common.py", "soft_targets"): "range check of CPU targets: not on a GPU",
    ("plugins/ee_timm/readings.py", "read"): "loss check: every step on a CPU, every "
    "READ_EVERY steps on a GPU",
    ("plugins/ee_tta/streaming.py", "_hand_on"): "the batch's scores: on a GPU a pinned copy "
    "read a batch later, no wait",
}


def ee_line() -> str | None:
    """``path:line:function`` of the innermost frame of ee's own code (tools left out) on the
    current stack: the line that led to what is being counted; None outside ee's code."""
    ours = [
        f
        for f in traceback.extract_stack()
        if f.filename.startswith(ROOT) and os.sep + "tools" + os.sep not in f.filename
    ]
    if not ours:
        return None
    return f"{ours[-1].filename.removeprefix(ROOT)}:{ours[-1].lineno}:{ours[-1].name}"


def count_host_reads() -> Counter[tuple[str, str]]:
    """Wrap the reading methods of ``torch.Tensor``; the counter fills as they are called."""
    reads: Counter[tuple[str, str]] = Counter()

    def wrap(name: str, method):  # type: ignore[no-untyped-def]
        def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            where = ee_line()
            if where is not None:
                reads[(where, name)] += 1
            return method(self, *args, **kwargs)

        return counted

    for name in METHODS:
        setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return reads


def produce_counting_reads(
    work: Path, args: argparse.Namespace
) -> tuple[Counter[tuple[str, str]], dict[str, int]]:
    """Write the digits under ``work`` and produce on them, counting host reads meanwhile;
    the reads and each split's image count."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    cli, runner = build_cli(), CliRunner()
    data = work / "digits"
    n = str(args.per_class)
    made = runner.invoke(
        cli, ["data", "digits", str(data), "--train-per-class", n, "--val-per-class", n]
    )
    assert made.exit_code == 0, made.output
    reads = count_host_reads()
    done = runner.invoke(
        cli, ["produce", "resnet10t-ce", "--data", str(data), "--store", str(work / "s.zarr"),
              "--runs-dir", str(work / "runs"), "--epochs", str(args.epochs), "--workers", "0",
              "--batch-size", str(args.batch), "--set", "warmup_epochs=0", "--test-sizes", "32",
              "--tta", args.tta],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    return reads, {s: len(list((data / s).rglob("*.png"))) for s in ("train", "val", "test")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=20, help="train and val images per digit")
    ap.add_argument("--tta", default="identity,hflip,rotate,color_jitter,gauss_noise")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ee-host-reads-"))
    os.environ["EE_CACHE_DIR"] = str(work / "cache")
    try:
        reads, splits = produce_counting_reads(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = args.epochs * math.ceil(splits["train"] / args.batch)
    batches = sum(math.ceil(n / args.batch) for s, n in splits.items() if s != "train")
    print(f"{'count':>6}  {'method':<10} line")
    outside = elsewhere = 0
    for (where, name), n in reads.most_common():
        path, _, function = where.split(":")
        note = ON_A_GPU.get((path, function), "")
        if where.startswith(LOADER_FILES):
            note = "data loader, CPU images"
        elif not note:
            elsewhere += n
        outside += 0 if where.startswith(LOADER_FILES) else n
        print(f"{n:>6}  {name:<10} {where}{f'  ({note})' if note else ''}")
    print(
        f"{steps} training steps, {args.epochs} validation passes, {batches} prediction batches "
        f"(val + test at one size); host reads outside the data loader: {outside} "
        f"({outside / (steps + batches):.2f} per step or batch), of which {elsewhere} in no "
        "line that a GPU run reads differently"
    )


if __name__ == "__main__":
    main()
