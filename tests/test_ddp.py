"""Several processes (torchrun's ranks) training and predicting one run.

Fast tests: the row partitioning against hand-worked lists; ``predict_split`` with two threads
standing in for two ranks (``ThreadGroup``), against a single process; the rank environment,
the training sampler and the ``--nproc`` launcher's arguments. Slow tests: real ``ee produce
--nproc 2`` and ``python -m torch.distributed.run`` runs (gloo, CPU) on a small digits tree,
whose predictions are compared with a single process's from the same checkpoint.
"""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ee_data import write_digits
from ee_data.imagefolder import ImageFolderSource
from ee_timm.checkpoint import load_checkpoint
from ee_timm.distributed import BACKEND_ENV, Launch, backend_for, rank_device
from ee_timm.loaders import ShardedSeededSampler
from ee_tta import predict_split
from helpers import numpy_dsb_weights, small_digits

from ensemble_engine.commands.launch import torchrun_command
from ensemble_engine.commands.produce import produce_command
from ensemble_engine.errors import RecipeError, StoreError
from ensemble_engine.shards import chunk_ranges, shard_chunk_rows
from ensemble_engine.store import open_store

# --- row partitioning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "step", "parts", "expected"),
    [
        # 10 rows in chunks of 3: chunks [0,3) [3,6) [6,9) [9,10); 2 parts take 2 chunks each
        (10, 3, 2, [(0, 6), (6, 10)]),
        # 3 chunks of 4 for 4 parts: one each, the last part none
        (10, 4, 4, [(0, 4), (4, 8), (8, 10), (10, 10)]),
        # 5 chunks of 2 for 3 parts: 2, 2, 1 (earlier parts take the spare chunks)
        (10, 2, 3, [(0, 4), (4, 8), (8, 10)]),
        # one chunk (fewer rows than a chunk) for 2 parts: the first takes it
        (7, 8, 2, [(0, 7), (7, 7)]),
        (0, 8, 2, [(0, 0), (0, 0)]),
        (12, 4, 1, [(0, 12)]),
    ],
)
def test_chunk_ranges_against_hand_lists(n, step, parts, expected):
    assert [(r.start, r.stop) for r in chunk_ranges(n, step, parts)] == expected


def test_chunk_ranges_cover_disjoint_whole_chunks():
    for n in range(0, 40):
        for step in (1, 3, 8):
            for parts in (1, 2, 3, 5):
                ranges = chunk_ranges(n, step, parts)
                assert len(ranges) == parts
                rows = [i for r in ranges for i in r]
                assert rows == list(range(n))  # covering, disjoint, in order
                for r in filter(len, ranges):
                    assert r.start % step == 0  # starts on a chunk
                    assert r.stop == n or r.stop % step == 0  # ends on one (or at the end)
                sizes = [-(-len(r) // step) for r in ranges]  # chunks per part
                assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("n", "base", "batch", "parts", "expected"),
    [
        (40, 65536, 8, 2, 24),  # ceil(40/2) = 20 → up to a batch: 24 (ranks: 24 + 16 rows)
        (1677, 65536, 8, 2, 840),  # ceil(1677/2) = 839 → 840
        (30, 65536, 4, 2, 16),  # 15 → 16
        # shares of 5000 rows, chunks of at most 960 (1000 rounded down to batches of 64):
        # 6 chunks a share, ceil(5000 / 6) = 834 → 896 (chunks of 960 would deal 6 and 5)
        (10_000, 1000, 64, 2, 896),
        (10_000, 1000, 64, 8, 640),  # shares of 1250 → 2 chunks of 625 → 640: 16 chunks, 2 each
        (5, 65536, 8, 2, 8),  # fewer rows than a batch: one batch
        (100, 10, 32, 2, 32),  # a chunk smaller than a batch: one batch
    ],
)
def test_shard_chunk_rows_against_hand_values(n, base, batch, parts, expected):
    assert shard_chunk_rows(n, base, batch, parts) == expected


# --- sharded prediction, threads standing in for ranks ----------------------------------------


class Board:
    """What the threads of one ``run_ranks`` share."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)  # a bug fails, never hangs
        self.value: bytes = b""
        self.slots: list[bytes] = [b""] * size


class ThreadGroup:
    """A rank of ``run_ranks``: objects travel pickled, as torch.distributed sends them."""

    def __init__(self, board: Board, rank: int) -> None:
        self.board, self.rank, self.size = board, rank, board.size

    def broadcast(self, obj):
        if self.rank == 0:
            self.board.value = pickle.dumps(obj)
        self.board.barrier.wait()
        out = pickle.loads(self.board.value)
        self.board.barrier.wait()
        return out

    def gather(self, obj):
        self.board.slots[self.rank] = pickle.dumps(obj)
        self.board.barrier.wait()
        out = [pickle.loads(s) for s in self.board.slots] if self.rank == 0 else None
        self.board.barrier.wait()
        return out


def run_ranks(size: int, fn: Callable[[ThreadGroup], object]) -> list[object]:
    """``fn(group)`` on ``size`` threads at once; each rank's result or exception."""
    board, results = Board(size), [None] * size

    def rank_main(rank: int) -> None:
        try:
            results[rank] = fn(ThreadGroup(board, rank))
        except Exception as exc:
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def tiny_net(classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, classes),
    )  # fmt: skip
    net.pretrained_cfg = {"input_size": (3, 16, 16), "crop_pct": 1.0, "architecture": "tiny"}
    return net.eval()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageFolderSource:
    root = tmp_path_factory.mktemp("ddp") / "digits"
    write_digits(root, train_per_class=3, val_per_class=2, size=16)  # 30 train images
    return ImageFolderSource(root)


@pytest.fixture
def store_path(tmp_path, digits) -> Path:
    store = open_store(tmp_path / "s.zarr", "w")
    store.set_classes(digits.classes)
    samples = digits.samples("train")
    store.add_split("train", [s.sample_id for s in samples], [s.label for s in samples])
    return tmp_path / "s.zarr"


# Random views: each batch's angles and noise come from the split's batch index.
OPTIONS = dict(
    split="train", test_size=16, views=["identity", "rotate", "gauss_noise"], batch_size=4,
    device="cpu", seed=3, dtype="float32", keep_views=True,
)  # fmt: skip


def predict_on_ranks(path: Path, digits, size: int, name: str, nets=None, **extra):
    nets = {rank: (nets or {}).get(rank) or tiny_net() for rank in range(size)}  # seeded here

    def rank_main(group: ThreadGroup):
        net = nets[group.rank]
        store = open_store(path, "a")
        samples = digits.samples("train")
        return predict_split(net, samples, store=store, name=name, group=group, **OPTIONS, **extra)

    return run_ranks(size, rank_main)


def test_two_ranks_write_what_one_process_writes(store_path, digits):
    store = open_store(store_path, "a")
    single = predict_split(tiny_net(), digits.samples("train"), store=store, name="one", **OPTIONS)
    results = predict_on_ranks(store_path, digits, 2, "two")
    ids = ["two/train", "two.view-identity/train", "two.view-rotate/train",
           "two.view-gauss_noise/train"]  # fmt: skip
    assert results == [ids, ids]  # every rank learns the ids
    store = open_store(store_path, "r")
    # 30 rows, batches of 4, 2 ranks: chunks of 16 rows (4 batches), rank 1 from batch 4 on
    assert store.group["predictions/two/train/scores"].chunks == (16, 10)
    for one_id, two_id in zip(single, ids, strict=True):
        one, two = store.get(*one_id.split("/")), store.get(*two_id.split("/"))
        assert two.attrs["complete"] is True
        np.testing.assert_allclose(store.read(two.name, "train"), store.read(one.name, "train"),
                                   rtol=0, atol=1e-5)  # fmt: skip
        assert {k: two.metrics[k] for k in ("n", "top1", "top5")} == {
            k: one.metrics[k] for k in ("n", "top1", "top5")
        }
        assert two.metrics["nll"] == pytest.approx(one.metrics["nll"], rel=1e-9)
    # the rotated view really differs between batches: keyed by a rank-local batch index,
    # rank 1's rows would not match (batch 4 is not batch 0)
    rotated = store.read("two.view-rotate", "train")
    assert not np.allclose(rotated, store.read("two.view-identity", "train"), atol=1e-3)


def test_an_error_on_one_rank_stops_both_and_leaves_nothing(store_path, digits):
    # rank 1's model has 3 classes: it fails on its first batch, after rank 0 opened the writers
    results = predict_on_ranks(store_path, digits, 2, "bad", nets={1: tiny_net(classes=3)})
    assert all(isinstance(r, RecipeError) for r in results), results
    assert all("outputs 3 classes" in str(r) for r in results)
    store = open_store(store_path, "r")
    assert not store.exists("bad", "train", include_incomplete=True)
    assert not store.exists("bad.view-rotate", "train", include_incomplete=True)
    # the lock is free again: the same name can be written now
    assert predict_on_ranks(store_path, digits, 2, "bad")[0][0] == "bad/train"


def test_a_taken_name_stops_every_rank_before_any_work(store_path, digits):
    store = open_store(store_path, "a")
    predict_split(tiny_net(), digits.samples("train"), store=store, name="taken", **OPTIONS)
    before = store.read("taken", "train")
    results = predict_on_ranks(store_path, digits, 2, "taken")
    assert all(isinstance(r, StoreError) and "already exists" in str(r) for r in results)
    np.testing.assert_array_equal(open_store(store_path, "r").read("taken", "train"), before)


# --- ranks, devices, the training sampler -----------------------------------------------------


def test_launch_from_torchrun_variables():
    assert Launch.from_env({}) is None
    assert Launch.from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    launch = Launch.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert launch == Launch(rank=3, size=4, local_rank=1)
    with pytest.raises(RecipeError, match="RANK=''"):
        Launch.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(RecipeError, match="outside WORLD_SIZE"):
        Launch.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    cpu = torch.device("cpu")
    assert rank_device(cpu, launch) == cpu
    with pytest.raises(RecipeError, match="pass --device cuda"):
        rank_device(torch.device("cuda", 1), launch)


def test_backend_follows_the_device_unless_named(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    monkeypatch.setenv(BACKEND_ENV, "gloo")
    assert backend_for(torch.device("cuda", 0)) == "gloo"
    monkeypatch.setenv(BACKEND_ENV, "nccl")
    with pytest.raises(RecipeError, match="needs CUDA"):
        backend_for(torch.device("cpu"))
    monkeypatch.setenv(BACKEND_ENV, "mpi")
    with pytest.raises(RecipeError, match="nccl or gloo"):
        backend_for(torch.device("cpu"))


def test_rank_shares_keep_each_samples_augmentation_seed():
    """An epoch's shares cover the data, and a sample's seed is the same with 1 or 2 ranks."""

    def share(rank: int, ranks: int, epoch: int) -> list[tuple[int, int]]:
        sampler = ShardedSeededSampler(10, rank, ranks, seed=7)
        sampler.set_epoch(epoch)
        return list(sampler)

    whole = dict(share(0, 1, epoch=2))
    halves = share(0, 2, epoch=2) + share(1, 2, epoch=2)
    assert sorted(i for i, _ in halves) == list(range(10)) == sorted(whole)
    assert all(whole[i] == seed for i, seed in halves)
    assert dict(share(0, 1, epoch=3)) != whole  # a new epoch, new seeds
    assert [i for i, _ in share(0, 1, epoch=2)] != list(range(10))  # shuffled


# --- ee produce --nproc ----------------------------------------------------------------------


def test_nproc_relaunches_the_same_options_under_torchrun():
    args = ["resnet10t-ce", "--epochs", "2", "--nproc", "2", "--no-vflip", "--force",
            "--set", "a=1", "--set", "b=2", "--dist-backend", "gloo", "--lr", "1e-3"]  # fmt: skip
    ctx = produce_command.make_context("produce", list(args))
    command = torchrun_command(ctx, 2)
    assert command[:8] == [
        sys.executable, "-m", "ensemble_engine.commands.torchrun", "--standalone",
        "--nproc_per_node=2", "-m", "ensemble_engine", "produce",
    ]  # fmt: skip
    again = produce_command.make_context("produce", command[8:])
    assert "--nproc" not in command and "--dist-backend" not in command
    for key, value in ctx.params.items():
        if key not in ("nproc", "dist_backend"):
            assert again.params[key] == value, key
    assert again.params["vflip"] is False and again.params["set_pairs"] == ("a=1", "b=2")


@pytest.mark.parametrize("exitcode", [2, 1])
def test_the_launcher_ends_a_ranks_user_error_as_ee_does(monkeypatch, capsys, exitcode):
    # exit code 2 (the rank printed its one-line error): exit 2, no traceback, no agent logs;
    # any other failure: torchrun's own error and every log record it held back
    import logging

    import torch.distributed.run as torchrun_module
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ensemble_engine.commands import torchrun

    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    def failing(argv=None):
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").error("rank failed")
        failure = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="<N/A>")
        raise ChildFailedError("ensemble_engine", {0: failure})

    monkeypatch.setattr(torchrun_module, "main", failing)
    catch = Catch()
    logging.getLogger("torch.distributed").addHandler(catch)
    try:
        if exitcode == 2:
            with pytest.raises(SystemExit) as stop:
                torchrun.main([])
            assert stop.value.code == 2 and seen == []
        else:
            with pytest.raises(ChildFailedError):
                torchrun.main([])
            assert seen == ["rank failed"]
    finally:
        logging.getLogger("torch.distributed").removeHandler(catch)
    assert logging.getLogger("torch.distributed.elastic").propagate


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--nproc", "0"], {}, "--nproc"),
        (["--nproc", "2"], {"WORLD_SIZE": "2"}, "leave it out under torchrun"),
        (["--dist-backend", "gloo"], {}, "add --nproc N"),
        (["--dist-backend", "mpi", "--nproc", "2"], {}, "--dist-backend"),
    ],
)
def test_nproc_mistakes_are_one_line(run_cli, tmp_path, monkeypatch, args, env, needle):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli("produce", "resnet10t-ce", "--store", tmp_path / "s.zarr", *args)
    assert result.exit_code == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--test-sizes", "4"], "test_sizes must be >= 8 pixels"),
        (["--data", "missing-folder"], "missing-folder"),
        (["--resume", "--run-id", "nothing-here"], "no run to resume"),
        (["--store", "memory://ranks"], "lives in one process's memory"),
    ],
)
def test_nproc_checks_the_request_before_starting_any_process(
    run_cli, tmp_path, monkeypatch, args, needle
):
    import ensemble_engine.commands.produce as produce_module

    launched = []
    monkeypatch.setattr(produce_module, "launch_torchrun", lambda *a: launched.append(a) or 0)
    monkeypatch.chdir(tmp_path)
    store = [] if "--store" in args else ["--store", "s.zarr"]
    result = run_cli("produce", "resnet10t-ce", *store, *args, "--nproc", "2")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert launched == [] and not (tmp_path / "s.zarr").exists()
    # the same command without the mistake is launched, and the launcher wrote no store
    ok = run_cli("produce", "resnet10t-ce", "--store", "s.zarr", "--nproc", "2")
    assert ok.exit_code == 0, ok.output
    assert len(launched) == 1 and not (tmp_path / "s.zarr").exists()


# --- real processes (gloo on CPU) -------------------------------------------------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Tiny settings for a tree of 16-pixel digits: 8 train and 4 val images per class, 44 test images.
SETTINGS = ["--set", "defaults=digits", "--img-size", "16", "--epochs", "2", "--batch-size", "8",
            "--workers", "0", "--test-sizes", "16", "--tta", "identity,rotate"]  # fmt: skip


def ee(*args: object, cwd: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``ee ARGS`` in a subprocess (through ``python -m ensemble_engine``) in ``cwd``."""
    command = [*(launcher or [sys.executable]), "-m", "ensemble_engine", *map(str, args)]
    env = {**os.environ, "EE_PLUGINS": ""}  # the built-in plugins only
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``ee produce --nproc 2`` once: (working folder, the finished process)."""
    work = tmp_path_factory.mktemp("ddp-run")
    small_digits(work / "data", train_per_class=8, val_per_class=4, test_images=44, size=16)
    done = ee("produce", "resnet10t-ce", "--data", "data", "--store", "s.zarr", "--runs-dir",
              "runs", "--run-id", "r", *SETTINGS, "--nproc", "2", cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done


@pytest.mark.slow
def test_ddp_run_folder_is_written_once(ddp_run):
    work, done = ddp_run
    run = work / "runs" / "r"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pth", "last.pth", "recipe.yaml", "summary.csv",
    ]  # fmt: skip
    with (run / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # 80 train images over 2 ranks: 40 each, batches of 8, none dropped: all 80 seen per epoch
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    assert "2 processes, gloo" in done.stderr
    assert done.stderr.count("epoch   1  train loss") == 1  # rank 1 prints nothing
    assert done.stdout.count("wrote 2 prediction(s)") == 1
    best = load_checkpoint(run / "best.pth")
    assert not any(k.startswith("module.") for k in best["model"])  # DDP's wrapper not saved


@pytest.mark.slow
def test_ddp_predictions_equal_a_single_process_from_the_same_checkpoint(ddp_run, run_cli):
    work, _ = ddp_run
    store_path = work / "s.zarr"
    result = run_cli("predict", work / "runs" / "r", "--data", work / "data", "--store",
                     store_path, "--name", "single")  # fmt: skip
    assert result.exit_code == 0, result.output
    store = open_store(store_path, "r")
    for split in ("val", "test"):
        ddp, single = store.get("resnet10t-ce-s16", split), store.get("single-s16", split)
        assert ddp.attrs["complete"] is True and ddp.attrs["tta"] == ["identity", "rotate"]
        # float16 scores; the ranks run one thread each (torchrun), this process two
        np.testing.assert_allclose(
            store.read(ddp.name, split), store.read(single.name, split), rtol=0, atol=4e-3
        )
        assert ddp.metrics["nll"] == pytest.approx(single.metrics["nll"], rel=1e-4)
        assert ddp.metrics["n"] == single.metrics["n"]


@pytest.mark.slow
def test_the_torchrun_command_resumes_and_repredicts(ddp_run):
    """``python -m torch.distributed.run ... -m ensemble_engine produce ... --resume``: every
    rank loads last.pth (nothing left to train) and the predictions are written again."""
    work, _ = ddp_run
    store_path = work / "s.zarr"
    before = open_store(store_path, "r").read("resnet10t-ce-s16", "test")
    summary = (work / "runs" / "r" / "summary.csv").read_text()
    done = ee("produce", "resnet10t-ce", "--data", "data", "--store", "s.zarr", "--runs-dir",
              "runs", "--run-id", "r", *SETTINGS, "--resume", "--force", cwd=work,
              launcher=TORCHRUN)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 2 prediction(s)") == 1
    assert (work / "runs" / "r" / "summary.csv").read_text() == summary
    after = open_store(store_path, "r").read("resnet10t-ce-s16", "test")
    np.testing.assert_array_equal(after, before)  # same ranks, same weights, same numbers


@pytest.mark.slow
def test_ddp_dsb_focal_pools_every_ranks_features(tmp_path):
    """dsb_focal under 2 ranks: each step's features of both ranks reach every rank's pools
    (all_gather), so the pools and class weights are the ranks' common ones."""
    small_digits(tmp_path / "data", train_per_class=8, val_per_class=4, test_images=8, size=16)
    done = ee("produce", "resnet10t-dsb_focal", "--data", "data", "--store", "s.zarr",
              "--runs-dir", "runs", "--run-id", "r", *SETTINGS, "--nproc", "2",
              cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loss = load_checkpoint(tmp_path / "runs" / "r" / "last.pth")["loss"]
    # 8 images a class, all seen each epoch over the 2 ranks (5 steps each): 16 features a
    # class after 2 epochs, 10 calls. Pools of one rank alone would hold about 8.
    assert loss["pool_count"].tolist() == [16] * 10 and loss["_extra_state"] == {"calls": 10}
    pool, count = loss["feature_pool"].numpy(), loss["pool_count"].numpy()
    weights = loss["class_weights"].numpy()
    assert weights.max() - weights.min() > 1e-3
    np.testing.assert_allclose(weights, numpy_dsb_weights(pool, count), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["nproc", "ranks"])
def test_a_user_error_stops_every_rank(tmp_path, launch):
    # nproc: `ee produce --nproc 2` refuses the recipe before starting torchrun; ranks: the
    # ranks themselves refuse it, under the torchrun that --nproc starts (commands.torchrun),
    # which then ends as ee does. Either way: the one line, exit code 2, nothing else.
    args = ["produce", "resnet10t-ce", "--store", "s.zarr", "--test-sizes", "4"]
    if launch == "nproc":
        done = ee(*args, "--nproc", "2", cwd=tmp_path)
    else:
        wrapper = [sys.executable, "-m", "ensemble_engine.commands.torchrun", *TORCHRUN[3:]]
        done = ee(*args, cwd=tmp_path, launcher=wrapper)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors and all("test_sizes must be >= 8 pixels" in line for line in errors)
    if launch == "nproc":
        assert "running 2 processes" not in done.stderr  # refused before torchrun started
    for noise in ("Traceback", "ChildFailedError", "exitcode", "SIGTERM"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "s.zarr").exists()
