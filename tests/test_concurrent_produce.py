"""Two ``ee produce`` processes into one store at the same time.

Different recipes: both finish. The same recipe (so the same run folder and prediction names):
both finish, or one of them stops with a one-line error (exit code 2). Either way the store
validates afterwards, no lock is left behind, and every prediction is whole: complete, and row
for row what its run's ``best.pth`` predicts when run alone (so no writer's rows ended up in the
other's prediction).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import small_digits
from rich.console import Console

from ensemble_engine.data import open_dataset, register_splits
from ensemble_engine.store import open_store

OPTIONS = ["--epochs", "2", "--workers", "0", "--test-sizes", "32", "--set", "defaults=digits"]
SPLITS = ("val", "test")
TIMEOUT = 180


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny digits: 4 train and 2 val images per class, a test split of 60 images."""
    root = tmp_path_factory.mktemp("concurrent-produce") / "digits"
    return small_digits(root, train_per_class=4, val_per_class=2, test_images=60)


def run_together(data: Path, folder: Path, recipes: list[str]) -> list[dict]:
    """``ee produce`` of each recipe, all started at once into one store and runs folder."""
    procs = []
    for i, recipe in enumerate(recipes):
        log = (folder / f"stderr-{i}.txt").open("w")
        args = ["produce", recipe, "--data", str(data), "--store", str(folder / "ee.zarr"),
                "--runs-dir", str(folder / "runs"), *OPTIONS]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "ensemble_engine", *args],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        procs.append((proc, log))
    out = []
    for i, (proc, log) in enumerate(procs):
        stdout, _ = proc.communicate(timeout=TIMEOUT)
        log.close()
        stderr = (folder / f"stderr-{i}.txt").read_text()
        out.append({"pid": proc.pid, "rc": proc.returncode, "stdout": stdout, "stderr": stderr})
    return out


def lock_files(store: Path) -> list[str]:
    return sorted(p.name for p in (store.parent / f".{store.name}.locks").glob("*.lock"))


def alone(run: Path, data: Path, scratch: Path) -> dict[str, np.ndarray]:
    """What the run's best.pth predicts for each split, in a store of its own."""
    from ee_timm.prediction import load_run, predict_run

    trained = load_run(run)
    source = open_dataset(data)
    store = open_store(scratch, "w")
    register_splits(store, source)
    ids = predict_run(trained, source, store, splits=list(SPLITS), name="alone",
                      console=Console(quiet=True))  # fmt: skip
    return {pid.split("/")[1]: store.read(*pid.split("/")) for pid in ids}


def assert_store_whole(run_cli, folder: Path, data: Path, names: dict[str, Path]) -> None:
    """``names``: prediction name (before -s32) → the run folder that made it."""
    store = folder / "ee.zarr"
    res = run_cli("validate", store)
    assert res.exit_code == 0, res.output
    listed = {p["id"] for p in json.loads(run_cli("ls", store, "--json").stdout)["predictions"]}
    assert listed == {f"{n}-s32/{s}" for n in names for s in SPLITS}, listed
    assert lock_files(store) == []
    st = open_store(store, "r")
    for name, run in names.items():
        expected = alone(run, data, folder / f"alone-{name}.zarr")
        for split in SPLITS:
            assert st.get(f"{name}-s32", split).attrs["complete"] is True
            np.testing.assert_array_equal(st.read(f"{name}-s32", split), expected[split])


def error_line(result: dict) -> str:
    """The one error line of a refused run: the last line of its stderr, no traceback."""
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result["stderr"][-3000:]
    return errors[0]


@pytest.mark.slow
def test_two_recipes_at_once_both_finish_and_stay_whole(data, tmp_path, run_cli):
    results = run_together(data, tmp_path, ["resnet10t-ce", "resnet10t-taylor"])
    for result in results:
        assert result["rc"] == 0, result["stderr"][-3000:]
    runs = {run.name.split("-s0-")[0]: run for run in (tmp_path / "runs").iterdir()}
    assert sorted(runs) == ["resnet10t-ce", "resnet10t-taylor_ce"]
    assert_store_whole(run_cli, tmp_path, data, runs)


@pytest.fixture(scope="module")
def same_recipe(data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The same recipe twice at once: one run folder, one prediction name."""
    folder = tmp_path_factory.mktemp("same")
    return folder, run_together(data, folder, ["resnet10t-ce", "resnet10t-ce"])


@pytest.mark.slow
def test_the_same_recipe_twice_at_once_leaves_one_whole_result(same_recipe, data, run_cli):
    folder, results = same_recipe
    assert sorted(r["rc"] for r in results) in ([0, 0], [0, 2]), [r["stderr"] for r in results]
    for result in results:
        if result["rc"] == 2:
            error_line(result)
    (run,) = (folder / "runs").iterdir()
    assert_store_whole(run_cli, folder, data, {"resnet10t-ce": run})


@pytest.mark.slow
def test_the_same_run_folder_is_locked_the_second_run_says_so_at_once(same_recipe):
    _, results = same_recipe
    refused = [r for r in results if r["rc"] == 2]
    assert len(refused) == 1
    (winner,) = [r for r in results if r["rc"] == 0]
    line = error_line(refused[0])
    assert "lock" in line and f"pid {winner['pid']}" in line, line
    # refused before training, not after: no epoch line (``epoch   1  train loss …``)
    assert not re.search(r"^epoch\s+\d", refused[0]["stderr"], re.MULTILINE)
