"""The example third-party plugin, installed for real and used through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EE = [sys.executable, "-m", "ensemble_engine"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """pip-install plugins/ee-example into a private folder (its entry points included)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "plugins" / "ee-example"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def ee(plugin_path: Path, *args, allow: str | None = None, check: bool = True):
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    env.pop("EE_PLUGINS", None)
    if allow is not None:
        env["EE_PLUGINS"] = allow
    res = subprocess.run([*EE, *map(str, args)], env=env, capture_output=True, text=True)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_installed_plugin_registers_a_loss_a_combiner_and_a_command(plugin_path):
    infos = {p["name"]: p for p in json.loads(ee(plugin_path, "plugins", "--json").stdout)}
    example = infos["ee_example"]
    assert example["builtin"] is False and example["version"] == "0.1.0"
    assert example["registers"] == {
        "losses": ["poly1"],
        "combiners": ["median_vote"],
        "commands": ["classes"],
    }


def test_allowlist_controls_third_party_loading(plugin_path):
    names = lambda res: {p["name"] for p in json.loads(res.stdout)}  # noqa: E731
    assert "ee_example" not in names(ee(plugin_path, "plugins", "--json", allow=""))
    assert "ee_example" in names(ee(plugin_path, "plugins", "--json", allow="ee_example"))
    assert "ee_example" not in names(ee(plugin_path, "plugins", "--json", allow="other"))
    res = ee(plugin_path, "classes", "x.zarr", allow="", check=False)
    assert res.returncode == 2 and "No such command 'classes'" in res.stderr


def test_plugin_command_runs(plugin_path, tmp_path):
    from ensemble_engine.store import open_store

    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["cat", "dog"])
    res = ee(plugin_path, "classes", tmp_path / "s.zarr")
    assert res.stdout == "0\tcat\n1\tdog\n"


def test_plugin_loss_is_built_by_name(plugin_path):
    code = (
        "import torch; from ensemble_engine.losses import create_loss;"
        "loss = create_loss('poly1', epsilon=2.0);"
        "print(float(loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    env.pop("EE_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    import math

    p = math.exp(1) / (math.exp(1) + 1)
    assert float(out) == pytest.approx(-math.log(p) + 2.0 * (1 - p), rel=1e-5)


@pytest.mark.slow
def test_plugin_loss_and_combiner_work_through_produce_and_combine(
    plugin_path, tmp_path, digits_dir
):
    """The plugin's loss trains a model via `ee produce`; its combiner fuses via `ee combine`."""
    store = tmp_path / "s.zarr"
    common = [
        "--data",
        digits_dir,
        "--store",
        store,
        "--runs-dir",
        tmp_path / "runs",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--test-sizes",
        "32",
        "--batch-size",
        "64",
        "--workers",
        "0",
    ]
    ee(plugin_path, "produce", "resnet10t-poly1", "--loss-param", "epsilon=2.0", *common)
    ee(plugin_path, "produce", "resnet10t-ce", *common)
    from ensemble_engine.store import open_store

    st = open_store(store, "r")
    assert {p.attrs["loss"] for p in st.list(split="val")} == {"poly1", "ce"}
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: [val, test]\nnodes:\n  med:\n"
        "    combiner: median_vote\n    inputs: ['resnet10t-*']\noutput: med\n"
    )
    ee(plugin_path, "combine", graph, "--store", store)
    st = open_store(store, "r")
    a, b = (st.read(f"resnet10t-{loss}-s32", "test") for loss in ("poly1", "ce"))
    pa = np.exp(a - a.max(1, keepdims=True))
    pa /= pa.sum(1, keepdims=True)
    pb = np.exp(b - b.max(1, keepdims=True))
    pb /= pb.sum(1, keepdims=True)
    med = (pa + pb) / 2  # the median of two is their mean
    np.testing.assert_allclose(st.read("med", "test"), med / med.sum(1, keepdims=True), atol=2e-3)


def test_sklearn_producer_produces_and_combines_end_to_end(plugin_path, tmp_path):
    """The example's scikit-learn producer, written against the public API only, through the
    CLI: `ee produce sklearn-pixels`, then a soft vote over its predictions with `ee combine`."""
    from helpers import small_digits

    from ensemble_engine.store import open_store

    infos = {p["name"]: p for p in json.loads(ee(plugin_path, "plugins", "--json").stdout)}
    assert infos["ee_example_sklearn"]["registers"] == {"producers": ["sklearn-pixels"]}
    data = small_digits(tmp_path / "digits", train_per_class=10, val_per_class=5, test_images=40)
    store = tmp_path / "s.zarr"
    common = ["--data", data, "--store", store]
    res = ee(plugin_path, "produce", "sklearn-pixels", *common)
    assert "sklearn-logreg-s8/test" in res.stdout and "sklearn-logreg-s8/val" in res.stdout
    ee(plugin_path, "produce", "sklearn-pixels", "--img-size", "12", *common)
    res = ee(plugin_path, "produce", "sklearn-pixels", *common, check=False)
    assert res.returncode == 2 and "pass --force" in res.stderr
    ee(plugin_path, "produce", "sklearn-pixels", "--force", *common)
    st = open_store(store, "r")
    for size in (8, 12):
        for split in ("val", "test"):
            pred = st.get(f"sklearn-logreg-s{size}", split)
            assert pred.kind == "probs" and pred.attrs["test_size"] == size
            assert pred.attrs["backbone"] == "sklearn-logreg"
            assert pred.metrics["top1"] > 0.5  # well above chance (0.1)
    assert not st.exists("sklearn-logreg-s8", "train")
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: [val, test]\nnodes:\n  vote:\n"
        "    combiner: soft_vote\n    inputs: ['sklearn-logreg-*']\noutput: vote\n"
    )
    ee(plugin_path, "combine", graph, "--store", store)
    st = open_store(store, "r")
    a, b = (st.read(f"sklearn-logreg-s{size}", "test") for size in (8, 12))
    np.testing.assert_allclose(st.read("vote", "test"), (a + b) / 2, atol=2e-3)
