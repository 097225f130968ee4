"""``kill -9`` of ``ee produce`` while it trains and while it writes predictions; ``--resume``.

After each kill the store must still validate, ``ee ls`` must not show a half-written prediction,
every prediction marked complete must be whole (equal to the uninterrupted run's), and the dead
process's lock must be broken by the next run without waiting. ``ee produce … --resume`` must
then finish with the same weights and predictions as an uninterrupted run with the same seed.

Same means bit-equal, not close: on the CPU the resumed run restores every random state from
``last.pth`` (torch, numpy, Python, the sampler's generator; each sample's augmentation is seeded
from that generator) and then performs the very same float operations in the same order, with
the same thread count, as the epochs it replaces; the predictions come from the same
``best.pth``. Any difference at all means a lost or extra random draw, or a stale checkpoint.
The kill points are found by polling the run folder and the store, not by sleeping.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_digits

from ensemble_engine.store import open_store

RECIPE = "resnet10t-ce"
NAME = "resnet10t-ce-s32"
SPLITS = ("val", "test")  # predicted in this order (every split but train)
# Three short epochs on the tiny digits with crops, noise and mixup switched on, so that the
# resumed run must restore torch's, numpy's and the sampler's random states to repeat the last.
OPTIONS = ["--epochs", "3", "--workers", "0", "--test-sizes", "32", "--set", "defaults=digits",
           "--noise", "--mixup", "0.2"]  # fmt: skip
TIMEOUT = 120


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny digits: 4 train and 4 val images per class, a test split of 200 images (long
    enough to predict that a poll every 2 ms sees its prediction half written)."""
    root = tmp_path_factory.mktemp("kill-produce") / "digits"
    return small_digits(root, train_per_class=4, val_per_class=4, test_images=200)


def produce_args(data: Path, folder: Path, *extra: str) -> list[str]:
    store, runs = folder / "ee.zarr", folder / "runs"
    return ["produce", RECIPE, "--data", str(data), "--store", str(store), "--runs-dir", str(runs),
            *OPTIONS, *extra]  # fmt: skip


def ee(args: list[str]) -> subprocess.CompletedProcess:
    """``ee ARGS`` in a fresh process, as a user runs it after a crash."""
    return subprocess.run(
        [sys.executable, "-m", "ensemble_engine", *args],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def run_folder(folder: Path) -> Path | None:
    found = sorted((folder / "runs").glob("*/"))
    return found[0] if found else None


def attrs_of(store: Path, pred: str) -> dict | None:
    try:
        return json.loads((store / "predictions" / pred / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def partial(store: Path, pred: str) -> bool:
    """Whether prediction ``pred`` (NAME/SPLIT) is on disk and not complete yet."""
    attrs = attrs_of(store, pred)
    return attrs is not None and attrs.get("complete") is False


def unfinished(store: Path) -> list[str]:
    """This run's predictions that are on disk without ``complete: true``."""
    found = {f"{NAME}/{s}": attrs_of(store, f"{NAME}/{s}") for s in SPLITS}
    return [pred for pred, attrs in found.items() if attrs and attrs.get("complete") is not True]


def lock_files(store: Path) -> dict[str, object]:
    """Lock file name → the pid in it (None where the file is empty or unreadable)."""
    out = {}
    for path in (store.parent / f".{store.name}.locks").glob("*.lock"):
        try:
            out[path.name] = json.loads(path.read_text()).get("pid")
        except (OSError, ValueError):
            out[path.name] = None
    return out


def kill_when(args: list[str], ready: Callable[[], bool], log: Path) -> int:
    """Run ``ee ARGS``, SIGKILL it once ``ready()``; returns its pid. stderr goes to ``log``
    (a pipe nobody reads could fill up and stall the process before the kill point)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ensemble_engine", *args], stdout=subprocess.DEVNULL, stderr=err
        )
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"ee produce ended (rc {proc.returncode}) before the kill point: "
                        f"{log.read_text()[-2000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point never came")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.pid


def checkpoint_weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / name, map_location="cpu", weights_only=True)["model"]


def train_losses(run: Path) -> list[str]:
    with (run / "summary.csv").open() as f:
        return [row["train_loss"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The uninterrupted run: its predictions, weights and per-epoch training losses."""
    folder = tmp_path_factory.mktemp("reference")
    done = ee(produce_args(data, folder))
    assert done.returncode == 0, done.stderr[-3000:]
    store, run = open_store(folder / "ee.zarr", "r"), run_folder(folder)
    return {
        "scores": {s: store.read(NAME, s) for s in SPLITS},
        "last": checkpoint_weights(run, "last.pth"),
        "best": checkpoint_weights(run, "best.pth"),
        "losses": train_losses(run),
        "run_id": run.name,
    }


def in_run(folder: Path, ready: Callable[[Path], bool]) -> Callable[[], bool]:
    def check() -> bool:
        run = run_folder(folder)
        return run is not None and ready(run)

    return check


KILL_POINTS: dict[str, Callable[[Path], Callable[[], bool]]] = {
    "training, after the first checkpoint": lambda f: in_run(
        f, lambda run: (run / "last.pth").exists()
    ),
    "training, while a checkpoint is written": lambda f: in_run(
        f, lambda run: any(run.glob(".*.pth.tmp-*"))
    ),
    "predicting the first split": lambda f: lambda: partial(f / "ee.zarr", f"{NAME}/val"),
    "predicting the second split, the first complete": lambda f: (
        lambda: partial(f / "ee.zarr", f"{NAME}/test")
    ),
}


def _params():
    for point in KILL_POINTS:
        yield pytest.param(point, id=point, marks=[pytest.mark.slow])


@pytest.mark.parametrize("point", list(_params()))
def test_kill_9_then_resume_equals_an_uninterrupted_run(point, data, reference, tmp_path, run_cli):
    store = tmp_path / "ee.zarr"
    pid = kill_when(produce_args(data, tmp_path), KILL_POINTS[point](tmp_path), tmp_path / "log")

    # The store: valid, nothing half-written visible, every complete prediction whole.
    if store.exists():
        res = run_cli("validate", store)
        assert res.exit_code == 0, res.output
        listed = {p["id"] for p in json.loads(run_cli("ls", store, "--json").stdout)["predictions"]}
        assert not listed & set(unfinished(store)), (listed, unfinished(store))
        st = open_store(store, "r")
        for split in SPLITS:
            if st.exists(NAME, split):
                np.testing.assert_array_equal(st.read(NAME, split), reference["scores"][split])
    if point.startswith("predicting"):
        half = unfinished(store)
        assert len(half) == 1, half  # the prediction being written when the process died
        assert pid in lock_files(store).values()  # its lock, left by the dead writer

    # The resumed run: no waiting on the dead lock, the same result as the uninterrupted run.
    resumed = ee(produce_args(data, tmp_path, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "waiting for" not in resumed.stderr
    run = run_folder(tmp_path)
    assert run.name == reference["run_id"]
    for name in ("last", "best"):
        weights = checkpoint_weights(run, f"{name}.pth")
        assert weights.keys() == reference[name].keys()
        different = [k for k in weights if not torch.equal(weights[k], reference[name][k])]
        assert different == [], f"{name}.pth differs in {different[:5]}"
    assert train_losses(run) == reference["losses"]
    st = open_store(store, "r")
    for split in SPLITS:
        np.testing.assert_array_equal(st.read(NAME, split), reference["scores"][split])
    assert unfinished(store) == [] and lock_files(store) == {}
    assert run_cli("validate", store).exit_code == 0
    # A checkpoint write cut short leaves its temporary file; the resumed run removed it.
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pth", "last.pth", "recipe.yaml", "summary.csv",
    ]  # fmt: skip


def test_a_killed_writers_temporary_checkpoint_is_removed_by_the_next_write(tmp_path):
    """``kill -9`` mid-``torch.save`` leaves ``.last.pth.tmp-<pid>@<host>``; the next write into
    the run folder removes it, but never the file of a writer still alive, nor one of another
    machine (whose pid says nothing here)."""
    import socket

    from ee_timm.checkpoint import load_checkpoint, save_checkpoint

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        left = tmp_path / f".last.pth.tmp-{dead.pid}@{host}"
        other = tmp_path / f".best.pth.tmp-{dead.pid}@{host}"
        busy = tmp_path / f".last.pth.tmp-{alive.pid}@{host}"
        remote = tmp_path / f".last.pth.tmp-{dead.pid}@elsewhere-{host}"
        for path in (left, other, busy, remote):
            path.write_bytes(b"half a checkpoint")
        save_checkpoint({"epoch": 2}, tmp_path / "last.pth")
        assert not left.exists() and not other.exists()  # the dead writer's, of either file
        assert busy.exists() and remote.exists()
        assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    finally:
        alive.kill()
        alive.wait()
