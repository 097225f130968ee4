"""A catalogue of bad recipes: each ``ee produce`` case is exit code 2 and one line naming the
fault and the fix, and the refused command writes nothing: not into the store, not into the runs
folder, not into the data.

The store, data and recipe half of ``ee produce``: YAML recipe files (syntax, unknown keys, wrong
types, out-of-range values), recipe names, backbones, losses and their parameters, ``--set`` pairs,
test sizes and TTA views, ``--subset`` files, ``--data`` folders and ``--resume``. Every case runs
the real ``ee`` app in-process on a fresh copy of a store that already holds the data's splits
(what ``ee store init`` or an earlier ``ee produce`` leaves), unless the case says otherwise.
Training is replaced by a function that fails the case: every fault here must be found before a
single epoch runs. ``test_bad_input.py`` holds the store, import and combine half.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_digits, snapshot
from PIL import Image

from ensemble_engine.data import open_dataset, register_splits
from ensemble_engine.errors import RecipeError
from ensemble_engine.store import open_store

Setup = Callable[[Path, Path], None]  # (working folder, tiny digits folder)
pytestmark = pytest.mark.filterwarnings("ignore:skipped .* not readable images")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny digits: 4 train and 2 val images per class, a test split of 10 images."""
    root = tmp_path_factory.mktemp("bad-recipe") / "digits"
    return small_digits(root, train_per_class=4, val_per_class=2, test_images=10)


@pytest.fixture(scope="module")
def template(data, tmp_path_factory) -> Path:
    """The data's splits registered, and one complete prediction named ``taken-s32``."""
    path = tmp_path_factory.mktemp("bad-recipe-store") / "s.zarr"
    store = open_store(path, "w")
    register_splits(store, open_dataset(data))
    n = store.split("val").n
    meta = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}
    store.write_prediction("taken-s32", "val", kind="logits", scores=np.zeros((n, 10)), meta=meta)
    return path


# --- what a case puts in its working folder (``root``) --------------------------------------


def text(name: str, content: str | bytes) -> Setup:
    def apply(root: Path, data: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return apply


def recipe_file(body: str, name: str = "r.yaml") -> Setup:
    """A recipe file that is fine apart from ``body``'s fault (fields are one per line)."""
    return text(name, body)


def not_images(root: Path, data: Path) -> None:
    """``bad/``: the digits' class folders, each holding a text file named .png."""
    for split in ("train", "val"):
        for c in range(10):
            folder = root / "bad" / split / str(c)
            folder.mkdir(parents=True)
            (folder / "x.png").write_text("not an image")


def without_val(root: Path, data: Path) -> None:
    """``noval/``: the tiny digits without their val split."""
    shutil.copytree(data, root / "noval", ignore=shutil.ignore_patterns("val"))


def small_images(root: Path, data: Path) -> None:
    """``tiny/``: train and val splits of two classes, a and b, of 4×4 images."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            folder = root / "tiny" / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), (i * 90, 0, 0)).save(folder / f"{i}.png")


def teacher_on_train(name: str, classes: list[str] | None) -> Setup:
    """A complete prediction ``name`` on the store's train split: probs over ``classes``, or
    labels where ``classes`` is None."""

    def apply(root: Path, data: Path) -> None:
        store = open_store(root / "s.zarr", "a")
        n = store.split("train").n
        if classes is None:
            store.write_prediction(name, "train", kind="labels", labels=np.zeros(n, np.int32))
            return
        scores = np.full((n, len(classes)), 1 / len(classes))
        store.write_prediction(name, "train", kind="probs", scores=scores, classes=classes)

    return apply


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after ``ee produce``; "{root}", "{data}", "{store}" are filled in
    fault: str  # what the error line must say is wrong
    fix: str  # and what it must say to do
    setup: Setup | None = None
    store: str = "template"  # "template": the registered store; "none": no store at the path
    data: bool = True  # add --data {data} (the tiny digits)


def case(id: str, *args: str, fault: str, fix: str, **kw) -> Case:
    return Case(id, args, fault, fix, **kw)


R = "{root}/r.yaml"


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# Damaged last.pth files: a checkpoint cut in half, a plain pickle, a torch file holding an
# object weights_only refuses (whose error suggests weights_only=False), one without our tag.
CUT = torch_bytes({"format": "ee_timm.checkpoint", "model": {"w": torch.zeros(4096)}})[:3000]
PICKLE = pickle.dumps({"epoch": 3})
OBJECTS = torch_bytes({"format": "ee_timm.checkpoint", "when": Fraction(1, 3)})
FOREIGN = torch_bytes({"state_dict": {"w": torch.zeros(2)}})
# Seven levels of ten aliases each: 10**7 values from a few lines ("billion laughs").
LAUGHS = (
    "backbone: resnet10t\nloss: ce\nloss_params:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))
)
# fmt: off
CASES = [
    # --- YAML recipe files ----------------------------------------------------------------
    case("file: does not exist", "{root}/nothere.yaml", fault="does not exist",
         fix="check the path"),
    case("file: unclosed bracket", R, fault="is not valid YAML", fix="line 2",
         setup=recipe_file("backbone: [resnet10t\nloss: ce\n")),
    case("file: a tab before a key", R, fault="is not valid YAML", fix="line 3",
         setup=recipe_file("backbone: resnet10t\nloss: ce\n\tepochs: 3\n")),
    case("file: not UTF-8", R, fault="is not UTF-8", fix="save it as UTF-8",
         setup=recipe_file(b"backbone: resnet10t\nloss: ce  # \xff\n")),
    case("file: empty", R, fault="must hold a mapping of recipe fields", fix="key: value lines",
         setup=recipe_file("")),
    case("file: a list", R, fault="must hold a mapping of recipe fields", fix="key: value lines",
         setup=recipe_file("- backbone: resnet10t\n- loss: ce\n")),
    case("file: an unknown key", R, fault="unknown field(s) colour", fix="known: backbone, loss",
         setup=recipe_file("backbone: resnet10t\nloss: ce\ncolour: red\n")),
    case("file: a key that is not text", R, fault="unknown field(s) 1", fix="known: backbone",
         setup=recipe_file("backbone: resnet10t\nloss: ce\n1: 2\n")),
    case("file: no backbone", R, fault="needs backbone", fix="backbone: resnet18",
         setup=recipe_file("loss: ce\nepochs: 3\n")),
    case("file: another producer's recipe", R, fault="unknown producer 'other'",
         fix="known: timm",
         setup=recipe_file("producer: other\nbackbone: resnet10t\nloss: ce\n")),
    case("file: epochs not an integer", R, fault="epochs takes an integer, not 3.5",
         fix="e.g. --set epochs=3",
         setup=recipe_file("backbone: resnet10t\nloss: ce\nepochs: 3.5\n")),
    case("file: scale with one number", R, fault="scale takes 2 comma-separated numbers",
         fix="e.g. --set scale=0.5,0.5",
         setup=recipe_file("backbone: resnet10t\nloss: ce\nscale: 0.5\n")),
    case("file: loss_params a list", R, fault="loss_params takes a mapping",
         fix="--set loss_params='{smoothing: 0.1}'",
         setup=recipe_file("backbone: resnet10t\nloss: ls\nloss_params: [0.1]\n")),
    case("file: lr .inf", R, fault="lr takes a number, not inf", fix="e.g. --set lr=0.5",
         setup=recipe_file("backbone: resnet10t\nloss: ce\nlr: .inf\n")),
    case("file: negative lr", R, fault="lr must be > 0", fix="warmup_lr/min_lr >= 0",
         setup=recipe_file("backbone: resnet10t\nloss: ce\nlr: -0.1\n")),
    case("file: unknown defaults profile", R, fault="unknown defaults profile 'cifar'",
         fix="use one of imagenet, digits",
         setup=recipe_file("backbone: resnet10t\nloss: ce\ndefaults: cifar\n")),
    case("file: defaults profile a list", R, fault="unknown defaults profile ['digits']",
         fix="use one of imagenet, digits",
         setup=recipe_file("backbone: resnet10t\nloss: ce\ndefaults: [digits]\n")),
    case("file: unknown backbone", R, fault="unknown backbone 'resnet181'",
         fix="did you mean resnet18",
         setup=recipe_file("backbone: resnet181\nloss: ce\n")),
    case("file: unknown loss", R, fault="unknown loss 'tayler'", fix="did you mean taylor",
         setup=recipe_file("backbone: resnet10t\nloss: tayler\n")),
    # issue 18: a key written twice (last-wins trained 500 epochs), aliases of aliases
    case("file: a key twice", R, fault="duplicate key 'epochs' (first at line 3) at line 4",
         fix="write each key once",
         setup=recipe_file("backbone: resnet10t\nloss: ce\nepochs: 1\nepochs: 500\n")),
    case("file: aliases of aliases", R,
         fault="the document's aliases expand to more than 100000 values",
         fix="write the values out", setup=recipe_file(LAUGHS)),
    case("file: loss parameter out of range", R, fault="loss parameter smoothing=2",
         fix="must lie in [0.0, 1.0)",
         setup=recipe_file("backbone: resnet10t\nloss: ls\nloss_params: {smoothing: 2}")),
    # --- recipe names and options -----------------------------------------------------------
    case("name: no loss", "resnet10t", fault="'resnet10t' is not <backbone>-<loss>",
         fix="see `ee recipes`"),
    case("name: unknown backbone", "resnet181-ce", fault="unknown backbone 'resnet181'",
         fix="did you mean resnet18"),
    case("name: unknown loss", "resnet10t-tayler", fault="unknown loss 'tayler'",
         fix="did you mean taylor"),
    case("option: --epochs 0", "resnet10t-ce", "--epochs", "0",
         fault="Invalid value for '--epochs': 0 is not in the range x>=1",
         fix="see `ee produce --help`"),
    case("option: --aa not a policy", "resnet10t-ce", "--aa", "bogus",
         fault="aa 'bogus' is not a timm augmentation policy", fix="use original, v0"),
    case("option: --device tpu", "resnet10t-ce", "--device", "tpu",
         fault="device must be auto, cpu, cuda or cuda:N", fix="device must be"),
    case("option: --mixup with an odd batch", "resnet10t-ce", "--mixup", "0.2",
         "--batch-size", "15", fault="mixup/cutmix need an even batch_size",
         fix="even batch_size"),
    case("option: --seed beyond 32 bits", "resnet10t-ce", "--seed", str(2**32),
         fault="seed must lie in 0..4294967295", fix="numpy takes 32 bits"),
    case("option: --img-size below the backbone's minimum", "inceptionresnetv2-ce",
         "--img-size", "64", fault="inception_resnet_v2 needs images of >= 75 pixels",
         fix=">= 75 pixels"),
    # --- --set KEY=VALUE --------------------------------------------------------------------
    case("set: no =", "resnet10t-ce", "--set", "lr", fault="'lr' is not KEY=VALUE",
         fix="see `ee produce --help`"),
    case("set: no key", "resnet10t-ce", "--set", "=3", fault="'=3' is not KEY=VALUE",
         fix="see `ee produce --help`"),
    case("set: unknown field", "resnet10t-ce", "--set", "colour=red",
         fault="--set colour=…: not a settable recipe field", fix="set one of"),
    case("set: the backbone", "resnet10t-ce", "--set", "backbone=resnet18",
         fault="--set backbone=…: not a settable recipe field",
         fix="name the backbone and loss in RECIPE"),
    case("set: lr not a number", "resnet10t-ce", "--set", "lr=fast",
         fault="lr takes a number, not 'fast'", fix="e.g. --set lr=0.5"),
    case("set: lr inf", "resnet10t-ce", "--set", "lr=inf", fault="lr takes a number, not 'inf'",
         fix="e.g. --set lr=0.5"),
    case("set: noise_sigma nan", "resnet10t-ce", "--set", "noise_sigma=1,nan",
         fault="noise_sigma takes 2 comma-separated numbers, not '1,nan'",
         fix="e.g. --set noise_sigma=0.5,0.5"),
    case("set: scale reversed", "resnet10t-ce", "--set", "scale=0.9,0.5",
         fault="scale must be 0 < min <= max <= 1", fix="e.g. 0.08,1"),
    case("set: loss_params not YAML", "resnet10t-ls", "--set", "loss_params={smoothing: 0.1",
         fault="loss_params takes a mapping",
         fix="--set loss_params='{smoothing: 0.1}'"),
    case("set: hflip above 1", "resnet10t-ce", "--set", "hflip=2",
         fault="hflip, vflip, noise: p in [0, 1]", fix="p in [0, 1]"),
    case("set: unknown defaults profile", "resnet10t-ce", "--set", "defaults=cifar",
         fault="unknown defaults profile 'cifar'", fix="use one of imagenet, digits"),
    case("set: negative warm-up", "resnet10t-ce", "--set", "warmup_epochs=-1",
         fault="warmup_epochs must be >= 0", fix=">= 0"),
    case("set: ema_decay 1", "resnet10t-ce", "--set", "ema_decay=1",
         fault="ema_decay must lie in (0, 1)", fix="(0, 1)"),
    case("set: unknown init", "resnet10t-ce", "--set", "init=he",
         fault="init must be one of xavier, default", fix="xavier, default"),
    case("set: unknown merge", "resnet10t-ce", "--set", "merge=median",
         fault="unknown TTA merge 'median'", fix="use one of mean_logits"),
    case("set: subset_per_class without a subset", "resnet10t-ce", "--set",
         "subset_per_class=10", fault="subset_per_class and other_per_class need a subset",
         fix="ee produce --subset FILE"),
    # --- losses and their parameters --------------------------------------------------------
    case("loss-param: out of range", "resnet10t-ls", "--loss-param", "smoothing=2",
         fault="loss parameter smoothing=2", fix="must lie in [0.0, 1.0)"),
    case("loss-param: not a number", "resnet10t-ls", "--loss-param", "smoothing=lots",
         fault="loss parameter smoothing='lots' must be a number",
         fix="must be a number"),
    case("loss-param: unknown parameter", "resnet10t-ce", "--loss-param", "nope=1",
         fault="does not accept parameters ['nope']", fix="ee plugins"),
    case("loss-param: not YAML", "resnet10t-ls", "--loss-param", "smoothing=[0.1",
         fault="--loss-param", fix="see `ee produce --help`"),
    case("loss-param: no =", "resnet10t-ls", "--loss-param", "smoothing",
         fault="'smoothing' is not KEY=VALUE", fix="see `ee produce --help`"),
    # --- test sizes and TTA views -----------------------------------------------------------
    case("test sizes: below 8 pixels", "resnet10t-ce", "--test-sizes", "4",
         fault="img_size and test_sizes must be >= 8 pixels", fix=">= 8 pixels"),
    case("test sizes: one size twice", "resnet10t-ce", "--test-sizes", "32,32",
         fault="test_sizes lists a size twice", fix="list each once"),
    case("test sizes: not numbers", "resnet10t-ce", "--test-sizes", "a,b",
         fault="'a,b' is not a list like 1,2", fix="see `ee produce --help`"),
    case("test sizes: none given", "resnet10t-ce", "--test-sizes", ",",
         fault="give at least one value", fix="see `ee produce --help`"),
    case("test sizes: other than a fixed-size backbone's", "vit_tiny_patch16_224-ce",
         "--test-sizes", "64", fault="takes only 224-pixel inputs",
         fix="use --test-sizes 224"),
    case("tta: unknown view", "resnet10t-ce", "--tta", "identity,spin",
         fault="unknown tta view 'spin'", fix="known: color_jitter"),
    case("tta: a view twice", "resnet10t-ce", "--tta", "identity,identity",
         fault="TTA view 'identity' is listed twice", fix="list each view once"),
    # --- --subset files -----------------------------------------------------------------------
    case("subset: an unknown class", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="subset class(es) 99 are not classes of the data",
         fix="list class ids as the store names them",
         setup=text("weak.txt", "3\n99\n")),
    case("subset: every class", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="the subset lists all 10 classes", fix="list fewer classes",
         setup=text("weak.txt", "\n".join(map(str, range(10))))),
    case("subset: the other class", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="subset must not list __other__", fix="it is added by itself",
         setup=text("weak.txt", "3\n__other__\n")),
    case("subset: a class twice", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="subset lists a class twice", fix="list each once",
         setup=text("weak.txt", "3\n8\n3\n")),
    case("subset: no class", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="names no class", fix="write one class id per line",
         setup=text("weak.txt", "# nothing yet\n")),
    case("subset: not UTF-8", "resnet10t-ce", "--subset", "{root}/weak.txt",
         fault="cannot read class list", fix="give a UTF-8 text file",
         setup=text("weak.txt", b"3\n\xff\n")),
    case("subset: --subset-per-class alone", "resnet10t-ce", "--subset-per-class", "5",
         fault="--subset-per-class and --other-per-class need --subset FILE",
         fix="see `ee produce --help`"),
    # --- --data folders -----------------------------------------------------------------------
    case("data: empty folder", "resnet10t-ce", "--data", "{root}/empty", data=False,
         fault="holds no folders", fix="expected train/<class>/",
         setup=text("empty/.keep", "")),
    case("data: missing folder", "resnet10t-ce", "--data", "{root}/nothere", data=False,
         fault="Directory '", fix="does not exist"),
    case("data: a file", "resnet10t-ce", "--data", "{root}/r.yaml", data=False,
         fault="is a file", fix="see `ee produce --help`", setup=text("r.yaml", "x")),
    case("data: files that are not images", "resnet10t-ce", "--data", "{root}/bad",
         data=False, fault="split 'train' in", fix="holds no readable images; add images",
         setup=not_images),
    case("data: files that are not images, new store", "resnet10t-ce", "--data", "{root}/bad",
         data=False, store="none", fault="split 'train' in",
         fix="holds no readable images; add images", setup=not_images),
    case("data: no val split", "resnet10t-ce", "--data", "{root}/noval", data=False,
         fault="has no val split to validate on", fix="pass --holdout 0.1",
         setup=without_val),
    case("data: another class space than the store's", "resnet10t-ce", "--data",
         "{root}/tiny", data=False, fault="holds classes [0, 1, 2",
         fix="use a separate store", setup=small_images),
    # --- runs and the store ---------------------------------------------------------------
    case("resume: no run to resume", "resnet10t-ce", "--resume", "--run-id", "gone",
         fault="no run to resume in", fix="drop --resume"),
    # issue 18 item 8: a damaged last.pth is refused before anything is written, in one line
    case("resume: empty last.pth", "resnet10t-ce", "--resume", "--run-id", "r",
         fault="runs/r/last.pth is empty", fix="start the run again without --resume",
         setup=text("runs/r/last.pth", b"")),
    case("resume: truncated last.pth", "resnet10t-ce", "--resume", "--run-id", "r",
         fault="runs/r/last.pth is truncated or damaged",
         fix="start the run again without --resume", setup=text("runs/r/last.pth", CUT)),
    case("resume: a foreign pickle as last.pth", "resnet10t-ce", "--resume", "--run-id", "r",
         fault="runs/r/last.pth is not a torch checkpoint",
         fix="start the run again without --resume", setup=text("runs/r/last.pth", PICKLE)),
    case("resume: a torch file of objects as last.pth", "resnet10t-ce", "--resume",
         "--run-id", "r", fault="runs/r/last.pth is not a checkpoint written by `ee produce`",
         fix="start the run again without --resume", setup=text("runs/r/last.pth", OBJECTS)),
    case("resume: a torch file without the tag", "resnet10t-ce", "--resume", "--run-id", "r",
         fault="(no ee_timm.checkpoint tag)", fix="start the run again without --resume",
         setup=text("runs/r/last.pth", FOREIGN)),
    case("run id: climbing out", "resnet10t-ce", "--run-id", "../up",
         fault="invalid run id '../up'", fix="no '/' or '..'"),
    case("name: predictions already there", "resnet10t-ce", "--name", "taken",
         "--test-sizes", "32", fault="prediction taken-s32/val already in",
         fix="pass --force to replace"),
    case("name: climbing out", "resnet10t-ce", "--name", "../up", "--test-sizes", "32",
         fault="invalid prediction name '../up-s32'", fix="no '/' or '..'"),
    case("store: a file", "resnet10t-ce", "--store", "{root}/r.yaml",
         fault="is a file, not a prediction store", fix="choose another path",
         setup=text("r.yaml", "x")),
    case("store: a bad recipe does not create the store", "resnet10t-tayler", store="none",
         fault="unknown loss 'tayler'", fix="did you mean taylor"),
    # --- distillation: --teacher (issue 21 item 4) ------------------------------------------
    case("teacher: unknown", "resnet10t-ce", "--teacher", "nope",
         fault="teacher 'nope' is not a prediction in", fix="name one of `ee ls"),
    case("teacher: no store yet", "resnet10t-ce", "--teacher", "nope", store="none",
         fault="does not exist yet, so it holds no teacher", fix="give the store"),
    case("teacher: not on train", "resnet10t-ce", "--teacher", "taken-s32",
         fault="has no complete prediction on split 'train'", fix="--apply train,..."),
    case("teacher: a class subset", "resnet10t-ce", "--teacher", "spec",
         fault="teacher spec/train covers a class subset", fix="full-class prediction",
         setup=teacher_on_train("spec", [*map(str, range(5)), "__other__"])),
    case("teacher: another class space", "resnet10t-ce", "--teacher", "other",
         fault="teacher other/train covers another class space", fix="full-class prediction",
         setup=teacher_on_train("other", [str(c) for c in reversed(range(10))])),
    case("teacher: labels, not scores", "resnet10t-ce", "--teacher", "votes",
         fault="teacher votes/train holds labels, not scores", fix="distil from logits or probs",
         setup=teacher_on_train("votes", None)),
    case("teacher: kd_alpha out of range", "resnet10t-ce", "--teacher", "nope",
         "--set", "kd_alpha=1.5", fault="kd_alpha must lie in [0, 1]", fix="e.g. 0.9"),
    case("teacher: kd_temperature without a teacher", "resnet10t-ce",
         "--set", "kd_temperature=2", fault="kd_temperature and kd_alpha need a teacher",
         fix="--teacher NAME"),
    case("teacher: with a subset", "resnet10t-ce", "--teacher", "nope", "--subset",
         "{root}/weak.txt", fault="a specialist (subset) cannot distil from a teacher",
         fix="drop --teacher or --subset", setup=text("weak.txt", "1\n7\n")),
    case("splits: unknown split", "resnet10t-ce", "--splits", "train,bogus",
         fault="has no split bogus", fix="choose from those"),
]
# fmt: on


def test_catalogue_is_large_and_ids_are_unique():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the case: every fault here must be found before the first epoch."""
    import ee_timm.producer

    def refuse(*args, **kwargs):
        raise AssertionError("training started: the fault was not found up front")

    monkeypatch.setattr(ee_timm.producer, "train", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(
    case: Case, data, template, tmp_path, run_cli, no_training
):
    root = tmp_path / "w"
    root.mkdir()
    if case.store == "template":
        shutil.copytree(template, root / "s.zarr")
    if case.setup is not None:
        case.setup(root, data)
    before = snapshot(root, data)
    fill = {"{root}": root, "{data}": data, "{store}": root / "s.zarr"}
    args = list(case.args)
    for key, value in fill.items():
        args = [a.replace(key, str(value)) for a in args]
    if "--store" not in args:
        args += ["--store", str(root / "s.zarr")]
    args += ["--runs-dir", str(root / "runs")] + (["--data", str(data)] if case.data else [])
    res = run_cli("produce", *args)
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    # The producer says what it is about to do before it fails; the error is the last line.
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert res.stdout == ""
    assert case.fault in errors[0], errors[0]
    assert case.fix in errors[0], errors[0]
    assert snapshot(root, data) == before


# --- the recipe API behind the catalogue: one-line RecipeErrors from every bad file ------------

BAD_FILES = {
    "unclosed bracket": (b"backbone: [resnet10t\nloss: ce\n", "line 2, column 5"),
    "a tab": (b"backbone: resnet10t\nloss: ce\n\tepochs: 3\n", "line 3, column 1"),
    "not UTF-8": (b"backbone: resnet10t\nloss: ce # \xff\n", "is not UTF-8 text"),
    "duplicate anchor": (b"a: &x 1\nb: *y\n", "not valid YAML"),
    "a list as a key": (b"backbone: resnet10t\nloss: ce\n[1, 2]: 3\n", "unhashable key"),
    "keys of two types": (b"backbone: resnet10t\nloss: ce\n1: 2\nz: 3\n", "unknown field(s) 1, z"),
    "defaults a mapping": (b"backbone: resnet10t\nloss: ce\ndefaults: {a: 1}\n", "defaults"),
    "a huge integer lr": (b"backbone: resnet10t\nloss: ce\nlr: " + b"9" * 400 + b"\n", "lr takes"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_recipe_files_raise_one_line_recipe_errors(name, tmp_path):
    from ee_timm.recipe import resolve_recipe

    content, needle = BAD_FILES[name]
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as caught:
        resolve_recipe(path)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message


def test_unreadable_recipe_file_is_a_recipe_error(tmp_path, monkeypatch):
    from ee_timm import recipe_resolve

    path = tmp_path / "r.yaml"
    path.write_text("backbone: resnet10t\nloss: ce\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, os.strerror(13), str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(RecipeError, match="cannot read recipe file .*check its permissions"):
        recipe_resolve.load_recipe_file(path)


def test_recipe_file_reads_exponent_numbers_and_merge_keys(tmp_path):
    """``1e-1`` is a number (YAML 1.1 reads it as text, which no loss takes), and ``<<:``
    merges a mapping whose keys the file may then override (issue 18, items 13 and 14)."""
    from ee_timm.recipe import resolve_recipe

    path = tmp_path / "r.yaml"
    path.write_text(
        "backbone: resnet10t\nloss: ls\nlr: 1e-2\nloss_params:\n"
        "  <<: &base {smoothing: 1e-1}\n  smoothing: 2E-1\n"
    )
    recipe = resolve_recipe(path)
    assert recipe.lr == 0.01 and recipe.loss_params == {"smoothing": 0.2}
    over = resolve_recipe("resnet10t-ls", {"set": {"loss_params": "{smoothing: 1e-1}"}})
    assert over.loss_params == {"smoothing": 0.1}
