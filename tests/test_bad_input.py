"""A catalogue of bad input: each case is exit code 2, one line naming the fault and the fix.

Broken graph files have their own catalogue (tests/test_graph_errors.py); this one covers
damaged stores, bad data folders and bad command-line arguments. Every case runs the real
``ee`` app in-process on a fresh copy of a small store, and the whole working folder (store,
input files, outputs) must be byte for byte the same afterwards: a refused command writes
nothing and leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import snapshot
from PIL import Image

from ensemble_engine.store import open_store

CLASSES = ["a", "b", "c"]
Setup = Callable[[Path], None]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """val (12 labelled), test (8 unlabelled); m1 logits, lab labels, sub a class subset."""
    path = tmp_path_factory.mktemp("template") / "s.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i}.png" for i in range(12)], rng.integers(0, 3, 12))
    st.add_split("test", [f"t{i}.png" for i in range(8)])
    meta = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}
    for split in ("val", "test"):
        n = st.split(split).n
        st.write_prediction("m1", split, kind="logits", scores=rng.normal(size=(n, 3)), meta=meta)
        st.write_prediction("lab", split, kind="labels", labels=rng.integers(0, 3, n), meta=meta)
        st.write_prediction(
            "sub",
            split,
            kind="logits",
            classes=["a", "__other__"],
            scores=rng.normal(size=(n, 2)),
            meta=meta,
        )
    return path


# --- what a case does to its folder (``root`` holds the store copy ``s.zarr``) --------------


def attrs(rel: str, **changes) -> Setup:
    """Hand-edit the attributes in ``s.zarr/<rel>/zarr.json`` (None deletes a key)."""

    def apply(root: Path) -> None:
        meta_path = root / "s.zarr" / rel / "zarr.json"
        meta = json.loads(meta_path.read_text())
        for key, value in changes.items():
            if value is None:
                meta["attributes"].pop(key, None)
            else:
                meta["attributes"][key] = value
        meta_path.write_text(json.dumps(meta))

    return apply


def garbage(rel: str) -> Setup:
    def apply(root: Path) -> None:
        (root / "s.zarr" / rel).write_bytes(b'{"zarr_format": 3, "node_ty\x00\xff')

    return apply


def remove(rel: str) -> Setup:
    return lambda root: shutil.rmtree(root / "s.zarr" / rel)


def array(rel: str, data: np.ndarray) -> Setup:
    """Replace the array at ``rel`` by ``data`` (another shape or dtype)."""

    def apply(root: Path) -> None:
        group = zarr.open_group(str(root / "s.zarr"), mode="r+")
        parent, _, name = rel.rpartition("/")
        del group[rel]
        group[parent].create_array(name, data=data)

    return apply


def npy(name: str, data: np.ndarray, allow_pickle: bool = False) -> Setup:
    return lambda root: np.save(root / name, data, allow_pickle=allow_pickle)


def text(name: str, content: str | bytes) -> Setup:
    def apply(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return apply


def images(**folders: int) -> Setup:
    """An image tree under ``data/``: ``train__a=2`` writes two images to ``data/train/a``."""

    def apply(root: Path) -> None:
        for key, count in folders.items():
            folder = root / "data" / key.replace("__", "/")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(folder / f"img{i}.png")

    return apply


def both(*steps: Setup) -> Setup:
    def apply(root: Path) -> None:
        for step in steps:
            step(root)

    return apply


def unreadable(name: str) -> Setup:
    """A file nobody may read (mode 000; as root, the test also makes ``os.access`` say so)."""

    def apply(root: Path) -> None:
        path = root / name
        path.write_bytes(b"x")
        path.chmod(0)

    return apply


def one_nan(n: int, k: int) -> np.ndarray:
    scores = np.zeros((n, k), np.float32)
    scores[n // 2, 1] = np.nan
    return scores


def csv_rows(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


LOGIT_HEADER = ["filename", "logit_0", "logit_1", "logit_2"]
VAL_ROWS = [[f"v{i}.png", "1", "0", "0"] for i in range(12)]
GOOD_TREE = images(train__a=2, train__b=2, train__c=2, val__a=1, val__b=1)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # "{root}" and "{store}" are filled in
    fault: str  # what the line must say is wrong
    fix: str  # and what it must say to do
    setup: Setup | None = None


# --- issue 18: imports that are not what they claim, names with a newline, labels.csv -------

PROB_HEADER = ["filename", "prob_0", "prob_1", "prob_2"]
PERCENT_ROWS = [[f"v{i}.png", "20", "30", "50"] for i in range(12)]
HUGE_WEIGHT_GRAPH = (
    "version: 1\nfit: val\napply: val\nnodes:\n  big:\n    combiner: soft_vote\n"
    "    inputs: [m1]\n    params: {weights: [1.0e+308]}\noutput: big\n"
)
ISSUE_18_INPUT_CASES = [
    Case(
        "import: percentages as --kind probs",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x", "--kind", "probs"),
        "x.npy: row index 0 is no probability distribution (values 20..50, sum 100",
        "divide percentages by 100",
        npy("x.npy", np.tile([20.0, 30.0, 50.0], (12, 1))),
    ),
    Case(
        "import: 5.0 everywhere as --kind probs",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x", "--kind", "probs"),
        "x.npy: row index 0 is no probability distribution (values 5..5, sum 15",
        "import unnormalised scores as --kind logits",
        npy("x.npy", np.full((12, 3), 5.0, np.float32)),
    ),
    Case(
        "import: CSV of prob_ columns in percent",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "x.csv: the row of 'v0.png' is no probability distribution",
        "divide percentages by 100",
        text("x.csv", csv_rows(PROB_HEADER, PERCENT_ROWS)),
    ),
    Case(
        "import: float32 logits beyond float16's range",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy: 12 rows hold scores beyond float16's range (±65504)",
        "import them with --dtype float32",
        npy("x.npy", np.full((12, 3), 1e5, np.float32)),
    ),
    Case(
        "import: a name ending in a newline",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x\n"),
        "invalid prediction name 'x\\n'",
        "use letters, digits",
        npy("x.npy", np.zeros((12, 3), np.float32)),
    ),
    Case(
        "combine: soft_vote weights whose sum overflows",
        ("combine", "{root}/g.yaml", "--store", "{store}"),
        "weights/0: 1e+308 is greater than the maximum of 1e+30",
        "soft_vote takes weights",
        text("g.yaml", HUGE_WEIGHT_GRAPH),
    ),
    Case(
        "data: labels.csv labels an image twice, differently",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "labels.csv line 3: image 'img0.png' is labelled 'b' here and 'a' on line 2",
        "keep one row per image",
        both(
            GOOD_TREE,
            images(test__imgs=2),
            text("data/test/labels.csv", "image,label\nimg0.png,a\nimg0.png,b\n"),
        ),
    ),
    Case(
        "data: labels.csv row for a missing image",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "labels.csv line 3: image 'gone.png' is not in",
        "remove the row or add the image",
        both(
            GOOD_TREE,
            images(test__imgs=2),
            text("data/test/labels.csv", "image,label\nimg0.png,a\ngone.png,b\n"),
        ),
    ),
]


# --- issue 18: the command line (-o on a device, attrs of the wrong type, store locations) --

SOFT_M1_GRAPH = (
    "version: 1\nfit: val\napply: test\nnodes:\n  sv:\n    combiner: soft_vote\n"
    "    inputs: [m1]\noutput: sv\n"
)
ISSUE_18_CLI_CASES = [
    Case(  # through a link: a regression replaces the link, never the machine's /dev/full
        "export: -o a full device",
        ("export", "{store}", "m1/val", "-o", "{root}/full"),
        "full: No space left on device",
        "free some space, or choose a writable file with -o",
        lambda root: (root / "full").symlink_to("/dev/full"),
    ),
    Case(
        "store: metrics not an object (combine)",
        ("combine", "{root}/g.yaml", "--store", "{store}"),
        "prediction m1/val is damaged: attrs metrics is 'good', not an object",
        "fix it in predictions/m1/val/zarr.json or re-create the prediction",
        both(attrs("predictions/m1/val", metrics="good"), text("g.yaml", SOFT_M1_GRAPH)),
    ),
    *(
        Case(
            f"store: metrics.top1 as text ({args[0]})",
            args,
            "prediction m1/val is damaged: attrs metrics.top1 is '0.5', not a number",
            "fix it in predictions/m1/val/zarr.json or re-create the prediction",
            both(
                attrs("predictions/m1/val", metrics={"top1": "0.5", "n": 12}),
                text("g.yaml", SOFT_M1_GRAPH),
            ),
        )
        for args in (
            ("ls", "{store}"),
            ("combine", "{root}/g.yaml", "--store", "{store}"),
            ("report", "{store}", "-o", "{root}/r.html"),
        )
    ),
    *(
        Case(
            f"store: source as text ({args[0]})",
            args,
            "prediction m1/val is damaged: attrs source is 'timm', not an object",
            "fix it in predictions/m1/val/zarr.json or re-create the prediction",
            both(attrs("predictions/m1/val", source="timm"), text("g.yaml", SOFT_M1_GRAPH)),
        )
        for args in (
            ("combine", "{root}/g.yaml", "--store", "{store}"),
            ("report", "{store}", "-o", "{root}/r.html"),
        )
    ),
    Case(
        "store init: a memory:// store",
        ("store", "init", "memory://x.zarr"),
        "store memory://x.zarr lives in one process's memory",
        "give a folder path",
    ),
    Case(
        "store init: a chained fsspec URL",
        ("store", "init", "simplecache::memory://x.zarr"),
        "chains filesystems with '::', which ee does not support",
        "give one URL such as s3://bucket/ee.zarr, or a folder path",
    ),
    Case(
        "validate: a missing path",
        ("validate", "{root}/typo.zarr"),
        "typo.zarr is not an ee store",
        "create one with `ee store init STORE --data DIR`",
    ),
    Case(
        "validate: a plain folder",
        ("validate", "{root}/plain"),
        "plain is not an ee store",
        "create one with `ee store init STORE --data DIR`",
        text("plain/notes.txt", "hello"),
    ),
]


# --- issue 16, item 2: ee import --fact KEY=VALUE and --classes FILE --------------------------

IMPORT_X = ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x")
X_NPY = npy("x.npy", np.zeros((12, 3), np.float32))
X2_NPY = npy("x.npy", np.zeros((12, 2), np.float32))  # columns of a, __other__
CLASSES_X = (*IMPORT_X, "--classes", "{root}/c.txt")


def classes_file(content: str | bytes, data: Setup = X2_NPY) -> Setup:
    return both(data, text("c.txt", content))


def fact_case(label: str, facts: tuple[str, ...], fault: str, fix: str) -> Case:
    args = tuple(a for f in facts for a in ("--fact", f))
    return Case(f"import --fact: {label}", (*IMPORT_X, *args), fault, fix, X_NPY)


ISSUE_16_IMPORT_CASES = [
    fact_case("no =", ("loss",), "--fact 'loss' is not KEY=VALUE", "write e.g. --fact loss="),
    fact_case("no key", ("=5",), "--fact '=5' is not KEY=VALUE", "write e.g. --fact loss="),
    fact_case(
        "key not a name",
        ("test-size=224",),
        "key 'test-size' is not a name",
        "use letters, digits and _, not starting with a digit",
    ),
    fact_case(
        "key starting with a digit", ("2nd=x",), "key '2nd' is not a name", "use letters, digits"
    ),
    fact_case(
        "reserved key classes",
        ("classes=a,b",),
        "'classes' is reserved by the store format (the store writes it)",
        "import a class subset with --classes FILE",
    ),
    fact_case(
        "reserved key name",
        ("name=x",),
        "'name' is reserved by the store format",
        "the name is --id",
    ),
    fact_case(
        "reserved key tta",
        ("tta=hflip",),
        "'tta' is reserved by the store format (ee import writes it)",
        "import the views as an .npz to record them",
    ),
    *(
        fact_case(
            f"reserved key {key}",
            (f"{key}=1",),
            f"{key!r} is reserved by the store format",
            "record the fact under another key",
        )
        for key in (
            "kind split split_fingerprint source metrics created complete inputs roles graph "
            "graph_name node_hash state foreach combiner recipe subset view"
        ).split()
    ),
    fact_case(
        "reserved key merge",
        ("merge=gmean",),
        "'merge' is reserved by the store format (ee import writes it)",
        "import the views as an .npz and choose --merge",
    ),
    fact_case(
        "a key given twice",
        ("loss=ce", "test_size=224", "loss=focal"),
        "--fact loss is given twice ('ce' and 'focal')",
        "give each fact once",
    ),
    fact_case(
        "a YAML list", ("tags=[a, b]",), "the value is a YAML list", "quote it to keep it as text"
    ),
    fact_case(
        "a YAML mapping", ("opts={{lr: 1}}",), "the value is a YAML mapping", "one text or number"
    ),
    fact_case("no value", ("loss=",), "--fact 'loss=': no value", "write e.g. --fact loss=VALUE"),
    fact_case("null", ("loss=~",), "the value reads as null", "give a value or drop the fact"),
    fact_case(
        "not YAML", ("note=[ce",), "the value is not one plain YAML scalar", "quote it as text"
    ),
    fact_case(
        "a YAML alias", ("note=*x",), "the value is not one plain YAML scalar", "quote it as text"
    ),
    *(
        fact_case(
            f"test_size={value}",
            (f"test_size={value}",),
            "test_size is a whole number >= 1, as `ee produce` records it",
            "write e.g. --fact test_size=224",
        )
        for value in ("big", "0", "-32", "224.5", "true", "'224'")
    ),
    fact_case("seed not whole", ("seed=1.5",), "seed is a whole number, as", "--fact seed=0"),
    fact_case("NaN", ("score=.nan",), "nan is not a finite number", "give a finite number"),
    Case(
        "import --classes: unknown class id",
        CLASSES_X,
        "c.txt line 2: 'z' is not a class of the store (a, b, c)",
        "list the store's class ids (`ee ls STORE --json` shows them)",
        classes_file("a\nz\n__other__\n"),
    ),
    Case(
        "import --classes: a class listed twice",
        CLASSES_X,
        "c.txt line 3: class 'a' is listed twice (first on line 1)",
        "list each class once",
        classes_file("a\n\n a\n__other__\n"),
    ),
    Case(
        "import --classes: __other__ listed twice",
        CLASSES_X,
        "c.txt line 3: class '__other__' is listed twice (first on line 2)",
        "list each class once",
        classes_file("a\n__other__\n__other__\n"),
    ),
    Case(
        "import --classes: __other__ not last",
        CLASSES_X,
        "c.txt line 1: __other__ must be the last class (it stands for every class not listed)",
        "move it to the end",
        classes_file("__other__\na\n"),
    ),
    Case(
        "import --classes: empty file",
        CLASSES_X,
        "c.txt lists no class",
        "write one store class id per line, optionally ending with __other__",
        classes_file(""),
    ),
    Case(
        "import --classes: a BOM and blank lines only",
        CLASSES_X,
        "c.txt lists no class",
        "write one store class id per line",
        classes_file("\ufeff\n  \n\t\n".encode()),
    ),
    Case(
        "import --classes: only __other__",
        CLASSES_X,
        "c.txt lists only __other__",
        "list the classes the specialist tells apart above it",
        classes_file("__other__\n"),
    ),
    Case(
        "import --classes: not UTF-8",
        CLASSES_X,
        "c.txt is not UTF-8 text",
        "save the class list as UTF-8",
        classes_file(b"a\n\xff\xfe\n"),
    ),
    Case(
        "import --classes: .npy wider than the list",
        CLASSES_X,
        "x.npy has shape [12, 3], split 'val' needs [12, 2] (c.txt lists 2 classes)",
        "give one column per listed class",
        classes_file("a\n__other__\n", X_NPY),
    ),
    Case(
        "import --classes: CSV columns not the list's",
        (*IMPORT_X[:2], "{root}/x.csv", *IMPORT_X[3:], "--classes", "{root}/c.txt"),
        "x.csv has 3 class columns for 2 classes (c.txt lists 2 classes)",
        "give one column per listed class",
        classes_file("b\n__other__\n", text("x.csv", csv_rows(LOGIT_HEADER, VAL_ROWS))),
    ),
    Case(
        "import --classes: .npz views not the list's",
        (*IMPORT_X[:2], "{root}/v.npz", *IMPORT_X[3:], "--classes", "{root}/c.txt"),
        "v.npz holds views of shape [12, 3], split 'val' needs [12, 2] (c.txt lists 2 classes)",
        "give one column per listed class",
        classes_file(
            "c\n__other__\n",
            lambda root: np.savez(root / "v.npz", identity=np.zeros((12, 3), np.float32)),
        ),
    ),
    Case(
        "import --classes: labels outside the listed classes",
        CLASSES_X,
        "x.npy holds labels outside 0..1",
        "give class indices of c.txt's 2 classes",
        classes_file("a\n__other__\n", npy("x.npy", np.arange(12) % 3)),
    ),
    Case(
        "import --classes: no such file",
        CLASSES_X,
        "does not exist",
        "ee import --help",
        X2_NPY,
    ),
    Case(
        "import --classes: a folder",
        (*IMPORT_X, "--classes", "{root}"),
        "is a directory",
        "ee import --help",
        X2_NPY,
    ),
    Case(
        "import: .npy without --classes narrower than the store",
        IMPORT_X,
        "x.npy has shape [12, 2], split 'val' needs [12, 3]",
        "give one column per store class, or a specialist's with --classes FILE",
        X2_NPY,
    ),
]

# --- issue 21, item 1: cost facts of an import (--fact gflops=, params=, images_per_s=, views=) -

ISSUE_21_COST_CASES = [
    *(
        fact_case(
            f"gflops={value}",
            (f"gflops={value}",),
            "gflops is a finite number >= 0, as `ee produce` records it",
            "write e.g. --fact gflops=4.1",
        )
        for value in ("-1", "-0.5", "fast", "true", "'4.1'", ".inf")
    ),
    *(
        fact_case(
            f"images_per_s={value}",
            (f"images_per_s={value}",),
            "images_per_s is a finite number > 0, as `ee produce` records it",
            "write e.g. --fact images_per_s=800",
        )
        for value in ("0", "-800", "quick", ".nan")
    ),
    *(
        fact_case(
            f"params={value}",
            (f"params={value}",),
            "params is a whole number >= 0, as `ee produce` records it",
            "write e.g. --fact params=25557032",
        )
        for value in ("-1", "25.5M", "2.5e7", "many")
    ),
    *(
        fact_case(
            f"views={value}",
            ("gflops=4.1", f"views={value}"),
            "views is a whole number >= 1, as `ee produce` records it",
            "write e.g. --fact views=4",
        )
        for value in ("0", "-2", "two")
    ),
    fact_case(
        "reserved key cost",
        ("cost=4.1",),
        "'cost' is reserved by the store format (ee writes it from --fact gflops=",
        "give --fact gflops=4.1 --fact params=25557032 --fact images_per_s=800",
    ),
]


CASES = [
    *ISSUE_16_IMPORT_CASES,
    *ISSUE_21_COST_CASES,
    # --- damaged or foreign stores --------------------------------------------------------
    Case(
        "store: newer format version",
        ("ls", "{store}"),
        "uses format version 2, newer than this ee reads (1)",
        "upgrade ensemble-engine",
        attrs(".", ee={"format": "ee.predictions", "version": 2}),
    ),
    Case(
        "store: format version not a number",
        ("ls", "{store}"),
        "invalid format version 'one'",
        "re-create the store",
        attrs(".", ee={"format": "ee.predictions", "version": "one"}),
    ),
    Case(
        "store: zarr group without ee attrs",
        ("ls", "{store}"),
        "is a zarr group but not an ee prediction store",
        "point at a store written by ee",
        attrs(".", ee=None),
    ),
    Case(
        "store: folder that is no zarr group",
        ("ls", "{root}/plain"),
        "no prediction store at",
        "ee store init STORE --data DIR",
        text("plain/notes.txt", "hello"),
    ),
    Case(
        "store: a file given as the store",
        ("ls", "{root}/file.txt"),
        "is a file, not a prediction store",
        "choose another path",
        text("file.txt", "hello"),
    ),
    Case(
        "store: root zarr.json is not JSON",
        ("ls", "{store}"),
        "damaged",
        "ee validate",
        garbage("zarr.json"),
    ),
    Case(
        "store: root classes not a list",
        ("ls", "{store}"),
        "the root is damaged: attrs classes is int, not a list of class ids",
        "re-create the store",
        attrs(".", classes=7),
    ),
    Case(
        "store: split zarr.json is not JSON",
        ("ls", "{store}"),
        "the splits group is damaged: UnicodeDecodeError",
        "see `ee validate STORE`, then rebuild the store with `ee store init`",
        garbage("splits/val/zarr.json"),
    ),
    Case(
        "store: split lacks its label array",
        ("ls", "{store}"),
        "split val is damaged",
        "ee store init",
        remove("splits/val/label"),
    ),
    Case(
        "store: split lacks its fingerprint",
        ("export", "{store}", "m1/val"),
        "split val is damaged",
        "ee store init",
        attrs("splits/val", fingerprint=None),
    ),
    Case(
        "store: hand-edited split fingerprint",
        ("export", "{store}", "m1/val"),
        "m1/val was predicted on other samples than split 'val'",
        "re-predict it",
        attrs("splits/val", fingerprint="sha256:0000000000000000"),
    ),
    Case(
        "store: hand-edited prediction fingerprint",
        ("export", "{store}", "m1/val"),
        "m1/val was predicted on other samples than split 'val'",
        "re-predict it",
        attrs("predictions/m1/val", split_fingerprint="sha256:1111111111111111"),
    ),
    Case(
        "store: prediction whose split vanished",
        ("export", "{store}", "m1/val"),
        "has no split 'val'",
        "ee store init",
        remove("splits/val"),
    ),
    Case(
        "store: prediction zarr.json is not JSON",
        ("ls", "{store}"),
        "predictions/m1 is damaged: UnicodeDecodeError",
        "see `ee validate STORE`, then re-create it",
        garbage("predictions/m1/val/zarr.json"),
    ),
    Case(
        "store: complete prediction lacks its scores",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged: no scores array",
        "re-create it",
        remove("predictions/m1/val/scores"),
    ),
    Case(
        "store: scores with too few rows",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged: scores of shape [5, 3], expected [12, 3]",
        "re-create it",
        array("predictions/m1/val/scores", np.zeros((5, 3), np.float32)),
    ),
    Case(
        "store: scores of an integer dtype",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged: scores of dtype int64, expected float16 or float32",
        "re-create it",
        array("predictions/m1/val/scores", np.zeros((12, 3), np.int64)),
    ),
    Case(
        "store: labels of a float dtype",
        ("export", "{store}", "lab/val"),
        "prediction lab/val is damaged: label of dtype float64, expected int32",
        "re-create it",
        array("predictions/lab/val/label", np.zeros(12, np.float64)),
    ),
    Case(
        "store: unknown prediction kind",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged: unknown kind 'votes'",
        "re-create it",
        attrs("predictions/m1/val", kind="votes"),
    ),
    Case(
        "store: array metadata is not JSON",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged",
        "ee validate",
        garbage("predictions/m1/val/scores/zarr.json"),
    ),
    Case(
        "store: truncated chunk",
        ("export", "{store}", "m1/val"),
        "prediction m1/val is damaged",
        "ee validate",
        garbage("predictions/m1/val/scores/c/0/0"),
    ),
    # --- data folders (ee store init --data) ----------------------------------------------
    Case(
        "data: empty folder",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "holds no folders",
        "expected train/<class>/",
        text("data/.keep", ""),
    ),
    Case(
        "data: missing folder",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/nothere"),
        "does not exist",
        "check the path",
    ),
    Case(
        "data: a file instead of a folder",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/img.png"),
        "Invalid value for '--data': Directory '",
        "is a file. (see `ee store init --help`)",
        text("img.png", "x"),
    ),
    Case(
        "data: one class folder",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "has 1 class folder(s) ['a']",
        "add class folders",
        images(train__a=3),
    ),
    Case(
        "data: an empty class folder",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "class folder(s) c in",
        "add images or remove the folders",
        both(images(train__a=2, train__b=2), text("data/train/c/.keep", "")),
    ),
    Case(
        "data: corrupt image with --strict",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data", "--strict"),
        "1 file(s) in split 'test'",
        "remove them or open the folder without strict",
        both(GOOD_TREE, images(test__imgs=2), text("data/test/imgs/broken.png", b"\x89PNG")),
    ),
    Case(
        "data: val class folder that train lacks",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "split 'val' has class folders that 'train' lacks: z",
        "rename or remove them",
        both(GOOD_TREE, images(val__z=1)),
    ),
    Case(
        "data: split folder without class folders",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "has no class folders and no imgs/ folder",
        "add <class>/ folders",
        both(GOOD_TREE, text("data/test/loose.png", "x")),
    ),
    Case(
        "data: labels.csv with a wrong header",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data"),
        "needs the columns image,label",
        "fix its header row",
        both(GOOD_TREE, images(test__imgs=2), text("data/test/labels.csv", "file,class\n")),
    ),
    Case(
        "data: store holds another class space",
        ("store", "init", "{store}", "--data", "{root}/data"),
        "holds classes [a, b, c] (3), not [x, y] (2)",
        "use a separate store",
        images(train__x=1, train__y=1),
    ),
    Case(
        "data: store holds other samples for a split",
        ("store", "init", "{store}", "--data", "{root}/data"),
        "split 'val' in",
        "use another store",
        GOOD_TREE,
    ),
    # --- command-line arguments -------------------------------------------------------------
    Case("cli: unknown command", ("frobnicate",), "No such command 'frobnicate'", "ee --help"),
    Case(
        "cli: unknown option",
        ("ls", "{store}", "--colour"),
        "No such option '--colour'",
        "ee ls --help",
    ),
    Case(
        "cli: missing argument", ("export", "{store}"), "Missing argument 'ID'", "ee export --help"
    ),
    Case(
        "ls: unknown split",
        ("ls", "{store}", "--split", "holdout"),
        "has no split 'holdout' (splits: test, val)",
        "ee store init",
    ),
    Case(
        "export: id with an empty split",
        ("export", "{store}", "m1/"),
        "invalid split name ''",
        "use letters, digits",
    ),
    Case(
        "export: id climbing out with ..",
        ("export", "{store}", "../val"),
        "invalid prediction name '..'",
        "no '/' or '..'",
    ),
    Case(
        "export: unknown split",
        ("export", "{store}", "m1/holdout"),
        "no complete prediction m1/holdout",
        "see `ee ls STORE`",
    ),
    Case(
        "export: --top-k 0",
        ("export", "{store}", "m1/val", "--top-k", "0"),
        "Invalid value for '--top-k': 0 is not in the range x>=1",
        "ee export --help",
    ),
    Case(
        "export: --top-k above the class count",
        ("export", "{store}", "m1/val", "--top-k", "4"),
        "--top-k 4 is more than the 3 classes of m1/val",
        "use at most 3",
    ),
    Case(
        "export: --top-k on a labels prediction",
        ("export", "{store}", "lab/val", "--top-k", "2"),
        "holds labels only",
        "--top-k needs scores",
    ),
    Case(
        "export: a class-subset prediction",
        ("export", "{store}", "sub/val"),
        "sub/val covers a class subset",
        "export a full-space prediction",
    ),
    Case(
        "export: -o names a directory",
        ("export", "{store}", "m1/val", "-o", "{root}"),
        "is a directory",
        "ee export --help",
    ),
    Case(
        "export: -o in a missing folder",
        ("export", "{store}", "m1/val", "-o", "{root}/no/such/dir/sub.csv"),
        "cannot write",
        "choose a writable file",
    ),
    Case(
        "import: into a missing store",
        ("import", "{root}/typo.zarr", "{root}/x.npy", "--split", "val", "--id", "x"),
        "no prediction store at",
        "ee store init STORE --data DIR",
        npy("x.npy", np.zeros((12, 3), np.float32)),
    ),
    Case(
        "import: a 3-d array",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy has shape [12, 3, 1], split 'val' needs [12, 3]",
        "needs",
        npy("x.npy", np.zeros((12, 3, 1), np.float32)),
    ),
    Case(
        "import: labels of the wrong length",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy holds 5 labels, split 'val' has 12 samples",
        "one label per sample",
        npy("x.npy", np.zeros(5, np.int64)),
    ),
    Case(
        "import: labels that are not integers",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy holds float64 labels",
        "save class indices as integers",
        npy("x.npy", np.full(12, 0.5)),
    ),
    Case(
        "import: labels outside the classes",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "labels outside 0..2",
        "class indices",
        npy("x.npy", np.full(12, 3, np.int64)),
    ),
    Case(
        "import: NaN scores",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "1 rows hold NaN or Inf scores",
        "nothing was written",
        npy("x.npy", one_nan(12, 3)),
    ),
    Case(
        "import: pickled object array",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy is not a plain numeric .npy array",
        "save it with numpy.save",
        npy("x.npy", np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True),
    ),
    Case(
        "import: garbage named .npy",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "x.npy is not a plain numeric .npy array",
        "save it with numpy.save",
        text("x.npy", b"PK\x03\x04 not an array"),
    ),
    Case(
        "import: CSV without class columns",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "has no full set of logit_<k>/prob_<k> columns",
        "--topk 0 --results-separate-col",
        text("x.csv", csv_rows(["filename", "top1", "top2"], [["v0.png", "1", "2"]])),
    ),
    Case(
        "import: CSV with a non-numeric score",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "x.csv line 3: 'high' is not a number",
        "fix the row",
        text("x.csv", csv_rows(LOGIT_HEADER, [VAL_ROWS[0], ["v1.png", "high", "0", "0"]])),
    ),
    Case(
        "import: CSV with a short row",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "x.csv line 2: 2 columns, the header has 4",
        "fix the row",
        text("x.csv", csv_rows(LOGIT_HEADER, [["v0.png", "1"], *VAL_ROWS[1:]])),
    ),
    Case(
        "import: CSV that is not UTF-8",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "x.csv is not UTF-8 text",
        "save it as UTF-8",
        text("x.csv", b"filename,logit_0\n\xff\xfe,1\n"),
    ),
    Case(
        "import: CSV rows that name other samples",
        ("import", "{store}", "{root}/x.csv", "--split", "val", "--id", "x"),
        "12 rows name no unique sample of the split (first: 't0.png')",
        "check --split",
        text("x.csv", csv_rows(LOGIT_HEADER, [[f"t{i}.png", "1", "0", "0"] for i in range(12)])),
    ),
    Case(
        "import: neither .npy nor .csv",
        ("import", "{store}", "{root}/x.txt", "--split", "val", "--id", "x"),
        "cannot import x.txt",
        "use a .npy array",
        text("x.txt", "1 2 3"),
    ),
    Case(
        "import: unreadable file",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "x"),
        "is not readable",
        "ee import --help",
        unreadable("x.npy"),
    ),
    Case(
        "import: a directory as the file",
        ("import", "{store}", "{root}", "--split", "val", "--id", "x"),
        "is a directory",
        "ee import --help",
    ),
    Case(
        "import: empty prediction name",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", ""),
        "invalid prediction name ''",
        "use letters, digits",
        npy("x.npy", np.zeros((12, 3), np.float32)),
    ),
    Case(
        "import: split name climbing out",
        ("import", "{store}", "{root}/x.npy", "--split", "../val", "--id", "x"),
        "has no split '../val'",
        "ee store init",
        npy("x.npy", np.zeros((12, 3), np.float32)),
    ),
    Case(
        "combine: graph file that does not exist",
        ("combine", "{root}/nothere.yaml", "--store", "{store}"),
        "no graph file",
        "give the path of a graph.yaml or a name from `ee graphs`",
    ),
    Case(
        "combine: missing store",
        ("combine", "vipriors2021", "--store", "{root}/missing.zarr"),
        "no prediction store at",
        "ee store init STORE --data DIR",
    ),
    Case(
        "combine: --set without values",
        ("combine", "vipriors2021", "--store", "{store}", "--set", "loss="),
        "--set loss: no values",
        "give KEY=V1,V2 or KEY=auto",
    ),
    Case(
        "combine: --set value that is not plain YAML",
        ("combine", "vipriors2021", "--store", "{store}", "--set", "loss=[ce"),
        "--set 'loss=[ce': a value is not plain YAML",
        "give text or numbers",
    ),
    Case(
        "combine: graph key YAML reads as a boolean",
        ("combine", "{root}/g.yaml", "--store", "{store}"),
        "g.yaml:4: key 'no' is read as bool, not text",
        "quote it ('no':)",
        text("g.yaml", "version: 1\nfit: val\napply: test\nnodes: {no: {combiner: x}}\n"),
    ),
    Case(
        "report: missing store",
        ("report", "{root}/missing.zarr", "-o", "{root}/r.html"),
        "no prediction store at",
        "ee store init STORE --data DIR",
    ),
    Case(
        "store init: STORE is a file",
        ("store", "init", "{root}/file.txt"),
        "is a file, not a prediction store",
        "choose another path",
        text("file.txt", "hello"),
    ),
    *ISSUE_18_INPUT_CASES,
    *ISSUE_18_CLI_CASES,
]


# --- issue 18, item 11: damaged images found before a write; re-registering changed splits ---


def truncated(rel: str) -> Setup:
    """Cut ``data/<rel>`` short: its header still reads, its pixels no longer do."""

    def apply(root: Path) -> None:
        path = root / "data" / rel
        content = path.read_bytes()
        path.write_bytes(content[: len(content) - 14])  # IEND and part of the last IDAT

    return apply


def registered(split: str, ids: list[str]) -> Setup:
    """``split`` registered in the store with ``ids`` (as an earlier ``ee store init`` left it)."""
    return lambda root: open_store(root / "s.zarr", "a").add_split(split, ids)


CASES += [
    Case(
        "data: truncated image with --strict",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data", "--strict"),
        "1 file(s) in split 'train'",
        "remove them or open the folder without strict",
        both(GOOD_TREE, truncated("train/a/img1.png")),
    ),
    Case(
        "data: a split whose images changed since it was registered",
        ("store", "init", "{store}", "--data", "{root}/data"),
        "split 'train' in",
        "re-register the folder's splits with `ee store init",
        both(registered("train", ["a/old.png", "b/old.png"]), GOOD_TREE),
    ),
    Case(
        "data: --replace-splits on a split that predictions were made on",
        ("store", "init", "{store}", "--data", "{root}/data", "--replace-splits"),
        "and predictions lab, m1, sub were made on the store's samples",
        "use another store for this data",
        GOOD_TREE,
    ),
]


# --- issue 16, item 6: ee produce --plan runs a run's checks and refuses what a run refuses ---

PLAN = ("produce", "resnet10t-ce", "--data", "{root}/data", "--runs-dir", "{root}/runs", "--plan")

CASES += [
    Case(
        "produce --plan: --resume of a run that does not exist",
        (*PLAN, "--store", "{root}/new.zarr", "--resume"),
        "no run to resume in",
        "drop --resume to start it",
        GOOD_TREE,
    ),
    Case(
        "produce --plan: data whose splits differ from the store's",
        (*PLAN, "--store", "{store}"),
        "split 'val' in",
        "use another store for this data",
        GOOD_TREE,
    ),
    Case(
        "produce --plan: an unknown defaults profile",
        (*PLAN, "--store", "{root}/new.zarr", "--set", "defaults=tiny"),
        "unknown defaults profile 'tiny'",
        "use one of imagenet, digits",
        GOOD_TREE,
    ),
    Case(
        "produce: --json without --plan",
        ("produce", "resnet10t-ce", "--store", "{root}/new.zarr", "--json"),
        "--json goes with --plan",
        "ee produce RECIPE --plan --json",
    ),
]


# --- issue 16, item 3: the store's held-out fusion split (ee store init --holdout) -----------


def holdout_store(fraction: float = 0.5) -> Setup:
    """``data/`` (GOOD_TREE: a 3, b 3, c 2 in train+val) in ``h.zarr`` with a holdout split."""

    def apply(root: Path) -> None:
        from ensemble_engine.data import open_dataset, register_splits
        from ensemble_engine.holdout import HoldoutRecord, HoldoutSource

        GOOD_TREE(root)
        record = HoldoutRecord(fraction)
        st = open_store(root / "h.zarr", "w")
        register_splits(st, HoldoutSource(open_dataset(root / "data"), record))
        st.set_holdout(record)

    return apply


HOLDOUT_INIT = ("store", "init", "{root}/new.zarr", "--data", "{root}/data", "--holdout")
ON_HOLDOUT = ("store", "init", "{root}/h.zarr", "--data", "{root}/data", "--holdout")
HOLDOUT_HELP = "(see `ee store init --help`)"

CASES += [
    Case(
        "store init --holdout: 0",
        (*HOLDOUT_INIT, "0"),
        "Invalid value for '--holdout': 0.0 is not in the range 0<x<1",
        HOLDOUT_HELP,
        GOOD_TREE,
    ),
    Case(
        "store init --holdout: 1.5",
        (*HOLDOUT_INIT, "1.5"),
        "Invalid value for '--holdout': 1.5 is not in the range 0<x<1",
        HOLDOUT_HELP,
        GOOD_TREE,
    ),
    Case(
        "store init --holdout: not a number",
        (*HOLDOUT_INIT, "a fifth"),
        "'a fifth' is not a valid float",
        HOLDOUT_HELP,
        GOOD_TREE,
    ),
    Case(
        "store init --holdout-seed: negative",
        (*HOLDOUT_INIT, "0.5", "--holdout-seed", "-1"),
        "Invalid value for '--holdout-seed': -1 is not in the range x>=0",
        HOLDOUT_HELP,
        GOOD_TREE,
    ),
    Case(
        "store init --holdout-seed without --holdout",
        ("store", "init", "{root}/new.zarr", "--data", "{root}/data", "--holdout-seed", "3"),
        "--holdout-seed needs --holdout FRACTION",
        HOLDOUT_HELP,
        GOOD_TREE,
    ),
    Case(
        "store init --holdout: data without val",
        (*HOLDOUT_INIT, "0.5"),
        "has no val split to draw the held-out fusion split from",
        "add val/<class>/ folders",
        images(train__a=2, train__b=2, train__c=2),
    ),
    Case(
        "store init --holdout: a class with one image in train+val",
        (*HOLDOUT_INIT, "0.5"),
        "class(es) [0] have a single sample",
        "add samples to them",
        images(train__a=1, train__b=2, train__c=2, val__b=1),
    ),
    Case(
        "store init --holdout: the data has a split folder named holdout",
        (*HOLDOUT_INIT, "0.5"),
        "has a split folder named 'holdout'",
        "rename the folder",
        both(GOOD_TREE, images(holdout__a=1)),
    ),
    Case(
        "store init --holdout: the store holds a holdout of another fraction",
        (*ON_HOLDOUT, "0.2"),
        "drawn with fraction 0.5, seed 0, not fraction 0.2, seed 0",
        "give --holdout 0.5 --holdout-seed 0, or use another store",
        holdout_store(),
    ),
    Case(
        "store init --holdout: the store holds a holdout of another seed",
        (*ON_HOLDOUT, "0.5", "--holdout-seed", "1"),
        "drawn with fraction 0.5, seed 0, not fraction 0.5, seed 1",
        "give --holdout 0.5 --holdout-seed 0, or use another store",
        holdout_store(),
    ),
    Case(
        "store init: a damaged holdout record",
        ("store", "init", "{store}", "--data", "{root}/data"),
        "the root's holdout record is damaged: holdout is not a mapping",
        "see `ee validate STORE`, then re-create the store",
        both(GOOD_TREE, attrs(".", holdout={"split": "holdout", "fraction": 0.5})),
    ),
    Case(
        "combine: a graph fitting on val on a store with a holdout",
        ("combine", "vipriors2021", "--store", "{root}/h.zarr"),
        "vipriors2021.yaml fits on 'val', but store",
        "add --fit holdout, or --fit val to fit on val all the same",
        holdout_store(),
    ),
    Case(
        "combine --fit: a split the store lacks",
        ("combine", "vipriors2021", "--store", "{store}", "--fit", "holdout"),
        "--fit holdout: store",
        "register it with `ee store init",
    ),
    Case(
        "combine --apply: no split",
        ("combine", "vipriors2021", "--store", "{store}", "--apply", ","),
        "give at least one value",
        "(see `ee combine --help`)",
    ),
]


def unlink(rel: str) -> Setup:
    return lambda root: (root / "s.zarr" / rel).unlink()


def flip_a_bit(rel: str) -> Setup:
    def apply(root: Path) -> None:
        path = root / "s.zarr" / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    return apply


# issue 18, items 1 and 4: a refused --force keeps the old version (the snapshot is byte for
# byte), and a missing or corrupted chunk is refused on read instead of read as zeros
CASES += [
    Case(
        "import --force: NaN scores keep the old prediction",
        ("import", "{store}", "{root}/x.npy", "--split", "val", "--id", "m1", "--force"),
        "1 rows hold NaN or Inf scores",
        "nothing was written",
        npy("x.npy", one_nan(12, 3)),
    ),
    Case(
        "store: a missing chunk",
        ("export", "{store}", "m1/test"),
        "prediction m1/test is damaged: chunk c/0/0 of scores is missing",
        "re-create it",
        unlink("predictions/m1/test/scores/c/0/0"),
    ),
    Case(
        "store: a chunk with one bit flipped",
        ("export", "{store}", "m1/test"),
        "prediction m1/test is damaged: chunk c/0/0 of scores fails its CRC32C checksum",
        "re-create it",
        flip_a_bit("predictions/m1/test/scores/c/0/0"),
    ),
    Case(
        "store: a missing labels chunk",
        ("export", "{store}", "lab/val"),
        "prediction lab/val is damaged: chunk c/0 of label is missing",
        "re-create it",
        unlink("predictions/lab/val/label/c/0"),
    ),
]


# --- ee combine --output NODE and ee weak-classes --max/--min ---------------------------------
CASES += [
    Case(
        "combine: --output naming no node",
        ("combine", "{root}/g.yaml", "--store", "{store}", "--output", "stage3"),
        "--output 'stage3' is not a node of the graph",
        "name one of sv",
        text("g.yaml", SOFT_M1_GRAPH),
    ),
    Case(
        "weak-classes: --min above --max",
        ("weak-classes", "{store}", "m1", "--min", "3", "--max", "2"),
        "--min 3 is more than --max 2",
        "lower --min or raise --max",
    ),
]


def test_damaged_images_are_found_before_produce_writes_and_splits_re_register(tmp_path, run_cli):
    """A truncated PNG (header fine, pixels cut) failed ``ee produce`` mid-training, after it
    had created the store, registered the splits and made the run folder; after the fix the
    re-run was refused ("re-register with replace") and no command did that."""
    from ee_data import SkippedFilesWarning
    from helpers import small_digits

    data = small_digits(tmp_path / "d", train_per_class=2, val_per_class=1, test_images=4)
    good = {p: p.read_bytes() for p in (data / "train" / "3").iterdir()}
    damaged = sorted(good)[0]
    damaged.write_bytes(good[damaged][: len(good[damaged]) // 2])
    store, runs = tmp_path / "s.zarr", tmp_path / "runs"
    quick = ("--epochs", "1", "--set", "defaults=digits", "--workers", "0", "--test-sizes", "32")
    args = ("produce", "resnet10t-ce", "--data", data, "--store", store, "--runs-dir", runs, *quick)
    with pytest.warns(SkippedFilesWarning, match=f"split 'train' .*: 3/{damaged.name}"):
        res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert open_store(store, "r").split("train").n == 19  # skipped, not met in training

    damaged.write_bytes(good[damaged])  # fixed: the train split now has one more image
    before = snapshot(tmp_path)
    res = run_cli(*args, "--force")
    assert res.exit_code == 2 and "Traceback" not in res.output
    fix = f"`ee store init {store} --data {data} --replace-splits`"
    assert res.stderr.splitlines()[-1].endswith(f"{fix}, or use another store"), res.stderr
    assert snapshot(tmp_path) == before  # refused: nothing written

    res = run_cli("store", "init", store, "--data", data, "--replace-splits")
    assert res.exit_code == 0, res.output
    assert "train: 20 samples (" in res.stdout and "re-registered (was" in res.stdout
    assert run_cli("validate", store).exit_code == 0

    # a test image is added: the store's predictions were made on the old test split
    test_image = sorted((data / "test" / "imgs").iterdir())[0]
    (test_image.parent / "added.png").write_bytes(test_image.read_bytes())
    before = snapshot(tmp_path)
    res = run_cli("store", "init", store, "--data", data, "--replace-splits")
    assert res.exit_code == 2, res.output
    assert "predictions resnet10t-ce-s32 were made on the store's samples" in res.stderr
    assert snapshot(tmp_path) == before


def test_catalogue_is_large_and_ids_are_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case, template, tmp_path, run_cli, monkeypatch
):
    root = tmp_path / "w"
    shutil.copytree(template, root / "s.zarr")
    if case.setup is not None:
        case.setup(root)
    if os.geteuid() == 0:  # root reads mode-000 files; tell access() what a user would see
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **kw: bool(Path(p).stat().st_mode & 0o444) and real_access(p, mode),
        )
    before = snapshot(root)
    args = [a.format(root=root, store=root / "s.zarr") for a in case.args]
    res = run_cli(*args)
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert res.stdout == ""
    assert case.fault in lines[0], lines[0]
    assert case.fix in lines[0], lines[0]
    assert snapshot(root) == before
