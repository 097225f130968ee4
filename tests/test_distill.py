"""Distillation (issue 21 item 4): the KD loss, the teacher's rows by sample id, mixing, and
``ee produce --splits train,...`` → ``ee combine`` applied to train → ``ee produce --teacher``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from ee_timm.distill import Distiller, kd_loss, kd_mixer, soft_targets, target_rows
from ee_timm.loaders import SampleDataset
from ee_timm.recipe import Recipe
from ee_timm.transforms import batch_mixer
from helpers import small_digits

from ensemble_engine.data import open_dataset, register_splits
from ensemble_engine.errors import RecipeError
from ensemble_engine.holdout import HoldoutRecord, HoldoutSource
from ensemble_engine.store import open_store


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_loss_is_t_squared_kl_of_softened_distributions():
    student = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    teacher = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    t = 2.0
    p, q = np_softmax(teacher / t), np_softmax(student / t)
    expected = t * t * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    soft = torch.from_numpy(soft_targets(teacher, "logits", t))
    got = kd_loss(torch.from_numpy(student), soft, t).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # by hand: p = [.6285 .2312 .1403], q = [.1863 .3072 .5065]: KL .5185; p = [.2119 .5761
    # .2119], q = [.4442 .2098 .3460]: KL .3212; T² × mean = 4 × .4198
    assert got == pytest.approx(1.6793, abs=1e-3)
    # a student that agrees with its teacher has nothing to learn from it
    assert kd_loss(torch.from_numpy(teacher), soft, t).item() == pytest.approx(0.0, abs=1e-5)


def test_probs_teachers_take_the_temperature_on_their_logarithm():
    probs = np.array([[0.64, 0.32, 0.04]])
    # softmax(log p / 2) = sqrt(p) / sum(sqrt(p)) = [0.8, 0.5657, 0.2] / 1.5657
    expected = np.sqrt(probs) / np.sqrt(probs).sum()
    np.testing.assert_allclose(soft_targets(probs, "probs", 2.0), expected, rtol=1e-12)
    np.testing.assert_allclose(soft_targets(probs, "probs", 1.0), probs, rtol=1e-12)
    zero = soft_targets(np.array([[1.0, 0.0]]), "probs", 4.0)  # log 0 floored, not -inf/NaN
    assert np.isfinite(zero).all() and zero[0, 1] > 0


def test_distiller_weighs_the_task_loss_and_the_kd_term():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    labels = np.array([2, 0])
    teacher = soft_targets(np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]]), "logits", 4.0)
    rows = torch.from_numpy(np.concatenate([np.eye(3)[labels], teacher], axis=1))
    log_q = np.log(np_softmax(logits.numpy().astype(np.float64)))
    ce = -np.mean(log_q[np.arange(2), labels])
    q_t = np_softmax(logits.numpy().astype(np.float64) / 4.0)
    kd = 16 * np.mean(np.sum(teacher * (np.log(teacher) - np.log(q_t)), axis=1))
    distil = Distiller(3, temperature=4.0, alpha=0.25, mixed=False)
    assert distil.labels(rows).tolist() == [2, 0]  # unmixed: class indices, as without teacher
    got = distil(torch.nn.CrossEntropyLoss(), logits, rows.float()).item()
    assert got == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-5)


def test_teacher_mixes_with_the_labels_lambda_and_pairing():
    recipe = Recipe("resnet10t", "ce", mixup=0.8, cutmix=1.0, batch_size=8)
    c, n = 8, 8
    labels = torch.arange(n)  # all different: the mixed label half shows lam
    teacher = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(1)), 1)
    rows = torch.cat([torch.eye(c)[labels], teacher], dim=1)
    images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for seed in range(6):  # mixup and cutmix batches alike
        np.random.seed(seed)
        mixed_images, mixed = kd_mixer(recipe, c)(images.clone(), rows.clone())
        np.random.seed(seed)
        plain_images, plain = batch_mixer(recipe, c)(images.clone(), labels.clone())
        torch.testing.assert_close(mixed_images, plain_images)
        torch.testing.assert_close(mixed[:, :c], plain)  # the labels as timm mixes them
        lam = plain[0, 0].item()
        torch.testing.assert_close(mixed[:, c:], lam * teacher + (1 - lam) * teacher.flip(0))


def sample_class(sample_id: str) -> int:
    """The class a test teacher favours for a sample: a function of its id alone."""
    return hashlib.sha256(sample_id.encode()).digest()[0] % 10


def test_teacher_rows_are_looked_up_by_sample_id(tmp_path):
    data = small_digits(tmp_path / "d", train_per_class=3, val_per_class=1, test_images=4)
    source = open_dataset(data)
    store = open_store(tmp_path / "s.zarr", "w")
    register_splits(store, source)
    ids = [str(i) for i in store.split("train").sample_ids]
    scores = np.zeros((len(ids), 10))
    scores[np.arange(len(ids)), [sample_class(i) for i in ids]] = 10.0
    store.write_prediction("teach", "train", kind="logits", scores=scores)
    recipe = Recipe("resnet10t", "ce", teacher="teach", kd_temperature=2.0)
    samples = source.samples("train")[::-1]  # another order than the store's
    rows = target_rows(store, recipe, source, samples, source.classes)
    assert rows.shape == (len(samples), 20)
    assert rows[:, :10].argmax(1).tolist() == [s.label for s in samples]
    assert rows[:, 10:].argmax(1).tolist() == [sample_class(s.sample_id) for s in samples]
    expected = soft_targets(scores[[ids.index(s.sample_id) for s in samples]], "logits", 2.0)
    np.testing.assert_allclose(rows[:, 10:].numpy(), expected, rtol=1e-6)
    # the loader hands each sample its own row, whatever order the sampler draws
    dataset = SampleDataset(samples, lambda image: 0, rows)
    assert torch.equal(dataset[(5, 123)][1], rows[5])


def test_a_store_holdouts_run_finds_its_teacher_on_train_and_val(tmp_path):
    """Under ``ee store init --holdout`` a run trains on train+val minus the holdout, whose ids
    read ``split/path``: the teacher is needed, and looked up, on both splits."""
    data = small_digits(tmp_path / "d", train_per_class=3, val_per_class=2, test_images=4)
    store = open_store(tmp_path / "s.zarr", "w")
    register_splits(store, open_dataset(data))
    source = HoldoutSource(open_dataset(data), HoldoutRecord(0.3))
    recipe = Recipe("resnet10t", "ce", teacher="teach")
    for split in ("train", "val"):
        ids = [f"{split}/{i}" for i in store.split(split).sample_ids]
        scores = np.zeros((len(ids), 10))
        scores[np.arange(len(ids)), [sample_class(i) for i in ids]] = 10.0
        store.write_prediction("teach", split, kind="logits", scores=scores)
        if split == "train":  # not on val yet: refused, naming the split
            with pytest.raises(RecipeError, match="no complete prediction on split 'val'"):
                target_rows(store, recipe, source, [], source.classes)
    samples = source.training_samples()[0]
    assert {s.sample_id.split("/")[0] for s in samples} == {"train", "val"}
    rows = target_rows(store, recipe, source, samples, source.classes)
    assert rows[:, 10:].argmax(1).tolist() == [sample_class(s.sample_id) for s in samples]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """Two models predicted on train too, a soft vote applied to train, a student of it."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    tmp = tmp_path_factory.mktemp("distill")
    data = small_digits(tmp / "d", train_per_class=6, val_per_class=3, test_images=10, size=16)
    common = [
        "--data", data, "--store", tmp / "s.zarr", "--runs-dir", tmp / "runs",
        "--set", "defaults=digits", "--img-size", "16", "--epochs", "1", "--workers", "0",
        "--test-sizes", "16", "--batch-size", "16",
    ]  # fmt: skip
    graph = tmp / "g.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: [train, val, test]\nnodes:\n  fused:\n"
        "    combiner: soft_vote\n    inputs: ['resnet10t-*']\noutput: fused\n"
    )
    runs = [
        ["produce", "resnet10t-ce", *common, "--splits", "train,val,test"],
        ["produce", "resnet10t-focal", *common, "--splits", "train,val,test"],
        ["combine", graph, "--store", tmp / "s.zarr"],
        ["produce", "resnet10t-ce", *common, "--teacher", "fused", "--name", "student"],
        ["produce", "resnet10t-ce", *common, "--teacher", "fused", "--set", "kd_alpha=0",
         "--name", "alpha0"],
    ]  # fmt: skip
    for args in runs:
        result = CliRunner().invoke(build_cli(), [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return tmp


def test_produce_predicts_train_when_asked_and_graphs_apply_to_train(distilled):
    store = open_store(distilled / "s.zarr", "r")
    for name in ("resnet10t-ce-s16", "resnet10t-focal-s16", "fused"):
        assert store.exists(name, "train"), name
    assert store.get("fused", "train").kind == "probs"
    assert store.get("resnet10t-ce-s16", "val").attrs["recipe"]["splits"] == [
        "train", "val", "test",
    ]  # fmt: skip
    # the student predicts the default splits: every one but train
    assert sorted(p.split for p in store.list("student-*")) == ["test", "val"]


def test_student_records_its_teacher_and_learnt_from_it(distilled):
    store = open_store(distilled / "s.zarr", "r")
    pred = store.get("student-s16", "val")
    assert pred.attrs["teacher"] == "fused"
    recipe = pred.attrs["recipe"]
    assert (recipe["teacher"], recipe["kd_temperature"], recipe["kd_alpha"]) == ("fused", 4, 0.9)
    (run,) = [p for p in (distilled / "runs").iterdir() if p.name == pred.attrs["run"]]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["teacher"] == "fused"
    # Same recipe, seed and data without a teacher (CPU training repeats exactly): only the
    # teacher's soft targets can make the student's scores differ.
    plain = store.read("resnet10t-ce-s16", "val")
    assert not np.allclose(store.read("student-s16", "val"), plain)
    # kd_alpha 0 leaves the labels alone in the loss: then the run is the plain one exactly
    np.testing.assert_array_equal(store.read("alpha0-s16", "val"), plain)
    assert "teacher" not in store.get("resnet10t-ce-s16", "val").attrs


def test_recipes_without_a_teacher_keep_their_fields_and_run_ids():
    plain = Recipe("resnet10t", "ce").to_dict()
    assert not {"teacher", "kd_temperature", "kd_alpha", "splits"} & set(plain)
    predicted = Recipe("resnet10t", "ce", splits=("train", "val", "test"))
    assert predicted.run_id() == Recipe("resnet10t", "ce").run_id()  # splits: weight-neutral
    assert Recipe("resnet10t", "ce", teacher="fused").run_id() != predicted.run_id()


def test_recipes_lists_the_distillation_fields(run_cli):
    result = run_cli("recipes", "--json")
    assert result.exit_code == 0, result.output
    kd = json.loads(result.stdout)["distillation"]
    assert kd["kd_temperature"]["default"] == 4.0 and kd["kd_alpha"]["default"] == 0.9
    assert "Tian et al. 2020" in kd["kd_temperature"]["source"]
