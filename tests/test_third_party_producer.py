"""External predictions: a third-party producer through the hook, and TTA views from .npz files.

A producer plugin needs nothing but the producer hook and the store API. The one here is a
nearest-class-mean classifier on pixels: class means of the train images shrunk to 8×8 grey,
logits = −(Euclidean distance to each mean).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ee_data import load_image, write_digits
from ee_data.imagefolder import ImageFolderSource
from ee_tta import merge_views

from ensemble_engine.data import open_dataset, register_splits
from ensemble_engine.hookspecs import hookimpl
from ensemble_engine.plugins import get_host, reset_host
from ensemble_engine.producer import Producer, ProduceRequest
from ensemble_engine.store import open_store


def pixels(path) -> np.ndarray:
    return np.asarray(load_image(path).convert("L").resize((8, 8)), dtype=np.float64).ravel()


class NearestClassMean(Producer):
    """Class means of train pixels; every other split scored by −distance to each mean."""

    def produce(self, request: ProduceRequest) -> list[str]:
        source = open_dataset(request.data_dir)
        register_splits(request.store, source)
        train = source.samples("train")
        x = np.stack([pixels(s.path) for s in train])
        y = np.array([s.label for s in train])
        means = np.stack([x[y == c].mean(axis=0) for c in range(len(source.classes))])
        ids = []
        for split in source.split_names():
            if split == "train":
                continue
            feats = np.stack([pixels(s.path) for s in source.samples(split)])
            dist = np.linalg.norm(feats[:, None, :] - means[None, :, :], axis=2)
            meta = {"source": {"type": "producer", "plugin": "ncm", "params": {"size": 8}}}
            pred = request.store.write_prediction(
                "ncm", split, kind="logits", scores=-dist, meta=meta, dtype="float32"
            )
            ids.append(pred.id)
        return ids


class NcmPlugin:
    @hookimpl
    def register_producers(self, register):
        register("ncm", NearestClassMean, description="nearest class mean on 8×8 pixels")


@pytest.fixture
def ncm_host():
    reset_host()
    get_host().add(NcmPlugin(), "ncm-plugin")
    yield
    reset_host()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageFolderSource:
    root = tmp_path_factory.mktemp("ncm") / "digits"
    write_digits(root, train_per_class=5, val_per_class=3, size=8)
    return ImageFolderSource(root)


def test_third_party_producer_runs_through_ee_produce(ncm_host, digits, run_cli, tmp_path):
    store_path = tmp_path / "s.zarr"
    result = run_cli("produce", "ncm", "--data", digits.root, "--store", store_path)
    assert result.exit_code == 0, result.output
    assert "ncm/test" in result.stdout and "ncm/val" in result.stdout
    store = open_store(store_path, "r")
    train = [(pixels(t.path), t.label) for t in digits.samples("train")]
    means = []  # one pixel at a time
    for c in range(10):
        members = [v for v, label in train if label == c]
        means.append([sum(v[k] for v in members) / len(members) for k in range(64)])
    for split in ("val", "test"):
        stored = store.read("ncm", split)
        samples = digits.samples(split)
        for i, sample in enumerate(samples[:12]):
            p = pixels(sample.path)
            for c in range(10):
                distance = math.sqrt(sum((p[k] - means[c][k]) ** 2 for k in range(64)))
                assert stored[i, c] == pytest.approx(-distance, rel=1e-5)
        right = sum(int(np.argmax(stored[i]) == s.label) for i, s in enumerate(samples))
        assert store.get("ncm", split).metrics["top1"] == pytest.approx(right / len(samples))
        assert right / len(samples) > 0.5  # nearest class mean reads digits well above chance
    listing = json.loads(run_cli("ls", store_path, "--json").stdout)
    assert {r["id"]: r["source"]["plugin"] for r in listing["predictions"]} == {
        "ncm/test": "ncm",
        "ncm/val": "ncm",
    }


# --- TTA views from .npz files ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path, digits):
    store = open_store(tmp_path / "s.zarr", "w")
    register_splits(store, digits)
    return store


@pytest.mark.parametrize(("merge", "kind"), [("mean_logits", "logits"), ("mean_probs", "probs"),
                                             ("gmean", "logits")])  # fmt: skip
def test_npz_views_merge_as_the_producer_merges(store, run_cli, tmp_path, merge, kind):
    n = store.split("val").n
    rng = np.random.default_rng(1)
    identity, hflip = rng.normal(size=(2, n, 10)).astype(np.float32) * 3
    path = tmp_path / "views.npz"
    np.savez(path, identity=identity, hflip=hflip)
    result = run_cli("import", store.path, path, "--split", "val", "--id", "ext-s8",
                     "--merge", merge)  # fmt: skip
    assert result.exit_code == 0, result.output
    pred = store.get("ext-s8", "val")
    assert pred.kind == kind and pred.attrs["tta"] == ["identity", "hflip"]
    assert pred.attrs["merge"] == merge and pred.attrs["source"]["type"] == "import"
    expected = merge_views(torch.from_numpy(np.stack([identity, hflip])), merge).numpy()
    np.testing.assert_allclose(store.read("ext-s8", "val"), expected, rtol=2e-3, atol=2e-3)


def test_npz_rows_align_by_sample_id(store, run_cli, tmp_path):
    ids = list(store.split("val").sample_ids)
    n = len(ids)
    logits = np.random.default_rng(2).normal(size=(n, 10)).astype(np.float32)
    order = np.random.default_rng(3).permutation(n)
    path = tmp_path / "shuffled.npz"
    np.savez(path, identity=logits[order], sample_id=np.array(ids)[order])
    result = run_cli("import", store.path, path, "--split", "val", "--id", "ext-s8")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(store.read("ext-s8", "val"), logits, rtol=2e-3, atol=2e-3)


def test_bad_npz_files_are_one_line_errors(store, run_cli, tmp_path):
    n = store.split("val").n
    cases = {
        "shapes.npz": {"identity": np.zeros((n, 10)), "hflip": np.zeros((n, 9))},
        "rows.npz": {"identity": np.zeros((n - 1, 10))},
        "flat.npz": {"identity": np.zeros(n)},
        "empty.npz": {"sample_id": np.array(["a"])},
    }
    needles = {"shapes.npz": "differ in shape", "rows.npz": f"needs [{n}, 10]",
               "flat.npz": "not a numeric [N, C]", "empty.npz": "no view arrays"}  # fmt: skip
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        result = run_cli("import", store.path, tmp_path / name, "--split", "val", "--id", "x")
        assert result.exit_code == 2, (name, result.output)
        assert needles[name] in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    result = run_cli("import", store.path, broken, "--split", "val", "--id", "x")
    assert result.exit_code == 2 and "not a readable .npz" in result.stderr
    np.savez(tmp_path / "ok.npz", identity=np.zeros((n, 10)))
    result = run_cli("import", store.path, tmp_path / "ok.npz", "--split", "val", "--id", "x",
                     "--kind", "probs")  # fmt: skip
    assert result.exit_code == 2 and "must be logits" in result.stderr
