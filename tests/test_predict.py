"""The timm producer's prediction half: ee produce → store, stored logits, ee predict (CPU).

One short run of timm's tiny ``test_resnet`` on a small digits tree (16-pixel images, 6 train and
3 val images per class, 20 test images) is trained once for the module; the tests read its run
folder and store.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from ee_data import write_digits
from ee_data.imagefolder import ImageFolderSource
from ee_timm.prediction import base_name
from ee_timm.recipe import resolve_recipe
from helpers import small_digits
from PIL import Image
from torchvision.transforms import functional as F

from ensemble_engine.store import open_store

SIZES = (16, 23, 27)  # img_size 16 and the seed's ratios: 16·320/224 = 22.9, 16·380/224 = 27.1
SPLITS = ("val", "test")
NAME = "test_resnet-ce"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.slow  # every test reads the run trained once for the module (~20 s)


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """``ee produce`` run once: (data root, store path, run folder, CLI result)."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    tmp = tmp_path_factory.mktemp("produce")
    data = small_digits(tmp / "digits", train_per_class=6, val_per_class=3, test_images=20, size=16)
    args = [
        "produce", NAME, "--data", data, "--store", tmp / "s.zarr", "--runs-dir", tmp / "runs",
        "--set", "defaults=digits", "--img-size", "16", "--epochs", "2", "--batch-size", "16",
        "--workers", "0", "--tta", "identity,hflip",
    ]  # fmt: skip
    result = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "runs").iterdir()
    return data, tmp / "s.zarr", run, result


def test_produce_writes_every_size_and_split(produced, run_cli):
    data, store_path, run, result = produced
    store = open_store(store_path, "r")
    ids = sorted(p.id for p in store.list())
    assert ids == sorted(f"{NAME}-s{s}/{sp}" for s in SIZES for sp in SPLITS)
    assert f"wrote 6 prediction(s) to {store_path}" in result.stdout
    recipe = resolve_recipe(run / "recipe.yaml")
    assert recipe.test_sizes == SIZES and base_name(recipe) == NAME
    for pred in store.list():
        attrs = pred.attrs
        assert (attrs["backbone"], attrs["loss"], attrs["seed"]) == ("test_resnet", "ce", 0)
        assert attrs["tta"] == ["identity", "hflip"] and attrs["merge"] == "mean_logits"
        assert attrs["test_size"] == int(pred.name.rsplit("-s", 1)[1])
        assert attrs["recipe"] == recipe.to_dict() and attrs["run"] == run.name
        source = attrs["source"]
        assert (source["type"], source["plugin"]) == ("producer", "ee_timm")
        assert source["plugin_version"] and source["params"]["checkpoint"] == "best.pth"
        assert pred.shape == (store.split(pred.split).n, 10)
        assert "classes" not in attrs  # the store's own class space
    listing = run_cli("ls", store_path, "--json")
    assert listing.exit_code == 0, listing.output
    rows = {r["id"]: r for r in json.loads(listing.stdout)["predictions"]}
    assert set(rows) == set(ids)
    for row in rows.values():
        assert set(row["metrics"]) >= {"top1", "top5", "nll"}
        assert row["facts"]["test_size"] in SIZES and row["source"]["type"] == "producer"


def eval_image(path, size: int, crop_pct: float) -> torch.Tensor:
    """timm's eval preprocessing written out: shorter side to floor(size / crop_pct), bilinear,
    centre crop, [0, 1] tensor, ImageNet normalisation."""
    image = Image.open(path).convert("RGB")
    image = F.resize(image, math.floor(size / crop_pct), F.InterpolationMode.BILINEAR)
    image = F.center_crop(image, [size, size])
    return F.normalize(F.to_tensor(image), MEAN, STD)


def test_stored_logits_equal_a_direct_forward_pass(produced):
    data, store_path, run, _ = produced
    saved = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    model.load_state_dict(saved["model"])
    model.eval()
    store = open_store(store_path, "r")
    source = ImageFolderSource(data)
    for split in SPLITS:
        samples = source.samples(split)
        assert [s.sample_id for s in samples] == list(store.split(split).sample_ids)
        for size in SIZES:
            x = torch.stack([eval_image(s.path, size, 0.875) for s in samples])
            with torch.no_grad():
                expected = ((model(x) + model(torch.flip(x, dims=[3]))) / 2).numpy()
            stored = store.read(f"{NAME}-s{size}", split)
            # float16 storage: about 3 significant digits
            np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)


def test_predict_adds_sizes_without_training(produced, run_cli):
    data, store_path, run, _ = produced
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    summary = (run / "summary.csv").read_text()
    args = ["predict", run, "--data", data, "--store", store_path, "--test-sizes", "16,20",
            "--tta", "identity", "--splits", "val", "--name", "plain"]  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    store = open_store(store_path, "r")
    assert sorted(p.id for p in store.list("plain-*")) == ["plain-s16/val", "plain-s20/val"]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert (run / "summary.csv").read_text() == summary  # no epoch was trained
    # The identity view at the training size is the run's own validation.
    best = torch.load(run / "best.pth", weights_only=True)
    top1 = store.get("plain-s16", "val").metrics["top1"]
    assert top1 == pytest.approx(best["val_top1"] / 100, abs=1 / 30 + 1e-9)
    assert store.get("plain-s20", "val").attrs["tta"] == ["identity"]
    again = run_cli(*args)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert run_cli(*args, "--force", "--keep-views").exit_code == 0
    assert store.exists("plain-s20.view-identity", "val")


def test_produce_refuses_taken_names_before_training(produced, run_cli):
    data, store_path, run, _ = produced
    runs = run.parent
    result = run_cli(
        "produce", NAME, "--data", data, "--store", store_path, "--runs-dir", runs,
        "--run-id", "second", "--set", "defaults=digits", "--img-size", "16", "--epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"{NAME}-s16/val" in result.stderr and "--name" in result.stderr
    assert not (runs / "second").exists()


def test_predict_errors_are_one_line(produced, run_cli, tmp_path):
    data, store_path, run, _ = produced
    result = run_cli("predict", tmp_path, "--data", data, "--store", store_path)
    assert result.exit_code == 2 and "holds no best.pth" in result.stderr
    bogus = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(2)}, bogus)
    result = run_cli("predict", bogus, "--data", data, "--store", store_path)
    assert result.exit_code == 2 and "not an ee_timm checkpoint" in result.stderr
    bogus.write_bytes(b"\x80\x04junk")
    result = run_cli("predict", bogus, "--data", data, "--store", store_path)
    assert result.exit_code == 2 and "not a checkpoint written by `ee produce`" in result.stderr
    result = run_cli("predict", run, "--data", data, "--store", store_path, "--tta", "mirror")
    assert result.exit_code == 2 and "mirror" in result.stderr
    result = run_cli("predict", run, "--data", data, "--store", store_path, "--merge", "median")
    assert result.exit_code == 2 and "median" in result.stderr
    other = tmp_path / "other"
    write_digits(other, train_per_class=2, val_per_class=1, size=16)
    result = run_cli("predict", run, "--data", other, "--store", store_path)
    assert result.exit_code == 2 and "holds other samples" in result.stderr
