"""The CUDA paths, proved on one GPU in a few minutes, with every number printed and kept.

    python tools/gpu_check.py [--budget-s 220]   # writes $OUT/gpu_check.json when OUT is set

Steps (each timed; one failing does not stop the others; a step that would start after
``--budget-s`` seconds is skipped and recorded as such):

1. ``device``: the card, its memory, torch / CUDA / cuDNN versions and TF32 settings.
2. ``produce``: ``ee produce resnet10t-ce`` on the digits with ``--device cuda --amp``
   (channels-last is the recipe's default), 4 epochs without warm-up; checks the saved recipe
   says cuda, AMP and channels-last, that every epoch's loss and val top-1 are finite and that
   it learns (val top-1 >= 30%; chance is 10%, float32 on CPU reaches 65%).
3. ``tta``: the trained checkpoint predicts the val split through ``ee_tta.predict_sizes`` on
   CUDA at 3 sizes x 5 views into the store (one read of the split for all sizes, loaded in
   parts by the workers, joined on the GPU); checks the scores are finite, gives top-1, checks
   that ``predict_split`` at one size on its own gives the same scores, and compares the
   identity view's logits on CUDA (float16 autocast) with the same on CPU.
   ``syncs``: ``ee produce`` again (2 epochs, then one size with 4 views) under CUDA's sync
   debug mode, every wait for the GPU counted by the ee line that caused it.
4. ``amp``: ``tools/bench_train.py``'s AMP + channels-last versus float32 comparison, resnet50,
   224 px, batch 128, 30 timed steps each on synthetic batches; again with cuDNN autotuning.
5. ``train_loop``: ``tools/bench_train.py``'s engine-versus-plain loop on CUDA (AMP,
   channels-last, 4 workers).
6. ``predict``: ``tools/bench_predict.py`` on CUDA, resnet50 at 224/320/380 with 8 workers.
7. ``views``: ``tools/bench_views.py`` on CUDA: the rotate and colour-jitter views batched
   against torchvision image by image (kernel launches and a read-back per image), 224/380.
8. ``train_loop_large`` and ``predict_large``: steps 5 and 6 with more work per epoch and per
   call (resnet18 at 128 px on 800 + 800 images; 1000 images to predict), so that the fixed
   per-epoch and per-call costs weigh as they do in real runs. From ``predict`` (200 images)
   and ``predict_large`` (1000) the summary splits each side's time into a fixed cost per call
   and a cost per image (a straight line through the two points).

Needs only the repository and a virtual environment with the package installed
(``pip install -e .``); nothing is downloaded. Without a CUDA device it stops at once with one
line saying so (exit status 1). Exits 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* scripts

STARTED = time.perf_counter()
VIEWS = ["identity", "hflip", "rotate", "color_jitter", "gauss_noise"]
# What each step runs on a GPU; a smoke run on CPU passes smaller values.
FULL: dict[str, Any] = {
    "epochs": 4,
    "workers": 4,
    "amp": {"backbone": "resnet50", "size": 224, "batch": 128, "steps": 30},
    "loop": {"backbone": "resnet10t", "epochs": 2, "repeats": 2, "workers": 4},
    # epochs long enough that per-epoch costs (validation, checkpoints) weigh as in real runs
    "loop_large": {
        "backbone": "resnet18", "epochs": 2, "repeats": 2, "workers": 8,
        "img_size": 128, "per_class": 80,
    },
    "predict": {"backbone": "resnet50", "sizes": (224, 320, 380), "repeats": 2, "workers": 8},
    "views": {"sizes": (224, 380), "batch": 64, "repeats": 10},
    # 1000 images instead of 200: the fixed costs (loader start, store writes) amortised
    "predict_large": {
        "backbone": "resnet50", "sizes": (224, 320, 380), "repeats": 2, "workers": 8,
        "per_class": 100,
    },
}  # fmt: skip


def elapsed() -> float:
    return time.perf_counter() - STARTED


class Report:
    """The results so far, written to ``$OUT/gpu_check.json`` after every step."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"ok": False, "steps": {}}

    def save(self) -> None:
        out = os.environ.get("OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.data, indent=2, default=str)
            Path(out, "gpu_check.json").write_text(text)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one check, print and record its numbers or its error, and go on."""
        print(f"\n== {name} (at {elapsed():.0f} s)", flush=True)
        if elapsed() > self.budget_s:
            record: dict[str, Any] = {"ok": False, "error": f"skipped: past {self.budget_s} s"}
        else:
            start = time.perf_counter()
            try:
                record = {"ok": True, **fn()}
            except Exception as exc:  # a failing check is a result too; the others still run
                traceback.print_exc()
                record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            record["seconds"] = round(time.perf_counter() - start, 2)
        self.data["steps"][name] = record
        for key, value in record.items():
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        sys.stdout.flush()
        self.save()


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise AssertionError(problem)


# --- the checks -------------------------------------------------------------------------------


def device_facts() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "card": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cpu_threads": torch.get_num_threads(),
    }


def produce(work: Path, device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``ee produce`` with AMP on ``device``; the run folder's recipe and summary are checked."""
    from ee_timm.checkpoint import read_recipe

    from ensemble_engine.cli import build_cli
    from ensemble_engine.store import open_store

    args = [
        *f"produce resnet10t-ce --epochs {cfg['epochs']} --device {device} --amp".split(),
        *f"--set warmup_epochs=0 --workers {cfg['workers']} --run-id gpu".split(),
        *["--store", str(work / "ee.zarr"), "--runs-dir", str(work / "runs")],
    ]
    start = time.perf_counter()
    build_cli().main(args, prog_name="ee", standalone_mode=False)
    seconds = time.perf_counter() - start
    run = work / "runs" / "gpu"
    recipe = read_recipe(run / "recipe.yaml")
    check(recipe["device"] == device, f"recipe device is {recipe['device']}, not {device}")
    check(recipe["amp"] is True and recipe["channels_last"] is True, "AMP/channels-last are off")
    with (run / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    check(len(rows) == cfg["epochs"], f"summary.csv has {len(rows)} epochs")
    losses = [float(r["train_loss"]) for r in rows]
    top1 = [float(r["val_top1"]) for r in rows]
    check(all(map(math.isfinite, losses + top1)), f"non-finite loss or top-1: {rows}")
    # float32 on CPU reaches 65% after 4 epochs (chance is 10%): well below means AMP broke it
    check(len(top1) < 4 or max(top1) >= 30, f"val top-1 stays at {max(top1)}% after 4 epochs")
    check((run / "best.pth").is_file() and (run / "last.pth").is_file(), "checkpoints missing")
    return {
        "command": "ee " + " ".join(args),
        "seconds_total": seconds,
        "train_loss": losses,
        "val_top1": top1,
        "img_s": [float(r["img_s"]) for r in rows],
        "predictions_written_by_produce": [p.id for p in open_store(work / "ee.zarr").list()],
    }


def syncs(work: Path, device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``ee produce`` (2 epochs, then val and test at one size with 4 views) under CUDA's sync
    debug mode: every operation that waits for the GPU, counted by the innermost line of ee's
    code that led to it. Expected: the loss check every READ_EVERY steps, the checkpoint
    snapshot once per epoch (a copy per tensor), two per validation pass and a few per
    prediction split; nothing per training step or per prediction batch."""
    from host_reads import ee_line

    from ensemble_engine.cli import build_cli

    counts: Counter[str] = Counter()
    shown = warnings.showwarning

    def hook(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        counts[ee_line() or f"{filename}:{lineno}"] += 1

    args = [
        *f"produce resnet10t-ce --epochs 2 --device {device} --amp --set warmup_epochs=0".split(),
        *f"--workers {cfg['workers']} --run-id syncs --test-sizes 32".split(),
        *["--tta", "identity,hflip,rotate,color_jitter", "--store", str(work / "syncs.zarr")],
        *["--runs-dir", str(work / "runs")],
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            build_cli().main(args, prog_name="ee", standalone_mode=False)
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    return {
        "command": "ee " + " ".join(args),
        "syncs_total": sum(counts.values()),
        "syncs_by_line": dict(counts.most_common()),
    }


def tta(work: Path, device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The trained checkpoint through ``predict_split`` on ``device``: 3 sizes x 5 views."""
    import numpy as np
    from ee_data import open_digits
    from ee_timm.builders import build_model
    from ee_timm.checkpoint import load_checkpoint
    from ee_timm.recipe import resolve_recipe
    from ee_tta import predict_sizes, predict_split

    from ensemble_engine.store import open_store

    run = work / "runs" / "gpu"
    recipe = resolve_recipe(run / "recipe.yaml")
    saved = load_checkpoint(run / "best.pth")
    model = build_model(recipe, len(saved["classes"]))
    model.load_state_dict(saved["model"])
    digits = open_digits()
    samples = digits.samples("val")
    store = open_store(work / "ee.zarr", "a")
    labels = store.split("val").labels

    def read(name: str) -> np.ndarray:
        scores = store.read(name, "val").astype(np.float32)
        check(bool(np.isfinite(scores).all()), f"{name}/val holds non-finite scores")
        return scores

    def predict(name: str, size: int, views: list[str], on: str, **options: Any) -> np.ndarray:
        predict_split(model, samples, store=store, name=name, split="val", test_size=size,
                      views=views, device=on, replace=True, **options)  # fmt: skip
        return read(name)

    out: dict[str, Any] = {"sizes": list(recipe.test_sizes), "views": VIEWS}
    start = time.perf_counter()
    predict_sizes(model, digits, ["val"], list(recipe.test_sizes), VIEWS, store=store,
                  name="gpucheck-tta", device=device, workers=cfg["workers"], replace=True,
                  dtype="float32")  # fmt: skip
    out["predict_seconds"] = time.perf_counter() - start
    for size in recipe.test_sizes:
        scores = read(f"gpucheck-tta-s{size}")
        out[f"top1_s{size}"] = float((scores.argmax(1) == labels).mean() * 100)
    size = recipe.test_sizes[-1]
    alone = predict("gpucheck-alone", size, VIEWS, device, dtype="float32")  # whole batches
    together = read(f"gpucheck-tta-s{size}")
    out["sizes_vs_split_max_abs_diff"] = float(np.abs(alone - together).max())
    check(out["sizes_vs_split_max_abs_diff"] <= 1e-3, "predict_sizes and predict_split differ")
    size = recipe.test_sizes[0]
    on_device = predict("gpucheck-device", size, ["identity"], device, dtype="float32")
    on_cpu = predict("gpucheck-cpu", size, ["identity"], "cpu", dtype="float32")
    diff, scale = float(np.abs(on_device - on_cpu).max()), float(np.abs(on_cpu).max())
    check(diff <= 0.05 * max(scale, 1.0), f"{device} and CPU logits differ by {diff} ({scale})")
    out["device_vs_cpu_max_abs_diff"] = diff
    out["cpu_logit_scale"] = scale
    out["device_cpu_argmax_agree"] = float((on_device.argmax(1) == on_cpu.argmax(1)).mean())
    return out


def amp(device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """AMP + channels-last versus float32; then the engine's AMP step with cuDNN autotuning."""
    from bench_train import amp_speedup, engine_steps
    from ee_timm.recipe import resolve_recipe

    a = cfg["amp"]
    res = amp_speedup(a["backbone"], a["size"], a["batch"], a["steps"], device)
    res["target"] = 1.5
    # The engine leaves cuDNN's autotuner off; how much would turning it on give?
    recipe = resolve_recipe(
        f"{a['backbone']}-ce",
        {"img_size": a["size"], "batch_size": a["batch"], "device": device},
        defaults="imagenet",
    )
    images = torch.randn(a["batch"], 3, a["size"], a["size"], device=device)
    targets = torch.randint(0, 1000, (a["batch"],), device=device)
    torch.backends.cudnn.benchmark = True
    try:
        seconds = engine_steps(recipe, [(images, targets)] * a["steps"])
    finally:
        torch.backends.cudnn.benchmark = False
    res["engine_amp_cl_cudnn_benchmark_s"] = seconds
    res["engine_amp_cl_cudnn_benchmark_img_s"] = a["batch"] * a["steps"] / seconds
    if device == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def train_loop(device: str, cfg: dict[str, Any], key: str = "loop") -> dict[str, Any]:
    from bench_train import loop_benchmark

    res = loop_benchmark(**cfg[key], device=device, amp=True, channels_last=True)
    res["target"] = 0.95
    return res


def predict(device: str, cfg: dict[str, Any], key: str = "predict") -> dict[str, Any]:
    from bench_predict import predict_benchmark

    res = predict_benchmark(**cfg[key], batch=64, device=device)
    res["target"] = 0.9
    return res


def views(device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from bench_views import views_benchmark

    res = views_benchmark(**cfg["views"], device=device)
    res["target"] = 1.0
    return res


def cost_per_call_and_image(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Each side's seconds as fixed + per_image * images, through two runs' best times."""
    out = {}
    for side in ("bare", "predict"):
        (n0, t0), (n1, t1) = ((r["images"], r[f"{side}_s"]) for r in (small, large))
        per_image = (t1 - t0) / (n1 - n0)
        out[side] = {"fixed_s": t0 - per_image * n0, "ms_per_image": 1000 * per_image}
    return out


def run_checks(report: Report, device: str = "cuda", cfg: dict[str, Any] = FULL) -> bool:
    """Every step on ``device``; True when all passed."""
    with tempfile.TemporaryDirectory(prefix="ee-gpu-check-") as tmp:
        work = Path(tmp)
        os.environ["EE_CACHE_DIR"] = str(work / "cache")  # the digits are written here
        if device == "cuda":
            report.step("device", device_facts)
        report.step("produce", lambda: produce(work, device, cfg))
        report.step("tta", lambda: tta(work, device, cfg))
        report.step("syncs", lambda: syncs(work, device, cfg))
        report.step("amp", lambda: amp(device, cfg))
        report.step("train_loop", lambda: train_loop(device, cfg))
        report.step("predict", lambda: predict(device, cfg))
        if "views" in cfg:
            report.step("views", lambda: views(device, cfg))
        if "loop_large" in cfg:
            report.step("train_loop_large", lambda: train_loop(device, cfg, "loop_large"))
        if "predict_large" in cfg:
            report.step("predict_large", lambda: predict(device, cfg, "predict_large"))
    steps = report.data["steps"]
    if steps.get("predict", {}).get("ok") and steps.get("predict_large", {}).get("ok"):
        report.data["predict_cost"] = cost_per_call_and_image(
            steps["predict"], steps["predict_large"]
        )
    report.data["ok"] = all(s["ok"] for s in steps.values())
    report.data["seconds"] = round(elapsed(), 1)
    report.save()
    print("\n== summary")
    for name, s in steps.items():
        ratio = f"  ratio {s['ratio']:.3f}x (target >= {s['target']}x)" if "ratio" in s else ""
        print(
            f"  {name:16s} {'ok' if s['ok'] else 'FAILED':6s} {s.get('seconds', 0):7.1f} s{ratio}"
        )
    for side, cost in report.data.get("predict_cost", {}).items():
        print(
            f"  {side:8s} fixed {cost['fixed_s']:.3f} s per call"
            f" + {cost['ms_per_image']:.2f} ms per image"
        )
    print(f"gpu_check {'passed' if report.data['ok'] else 'FAILED'} in {elapsed():.0f} s")
    return report.data["ok"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=220, help="start no step after this")
    args = ap.parse_args()
    report = Report(args.budget_s)
    if not torch.cuda.is_available():
        report.data["error"] = "no CUDA device"
        report.save()
        raise SystemExit(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); "
            "run it on a machine with an NVIDIA GPU"
        )
    sys.exit(0 if run_checks(report) else 1)


if __name__ == "__main__":
    main()
