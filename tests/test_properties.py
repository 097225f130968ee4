"""Property tests: whatever a user writes or hand-edits, ee answers with its own errors.

- any graph document, dumped to YAML, either plans or raises an ``EEError`` subclass;
- any attrs written onto a store's root, splits or predictions leave ``open_store``, listing and
  reading working or raising ``EEError``, and ``validate_store`` always returns its problems; a
  store it finds valid must read without error;
- prediction and split names are accepted only if they stay inside their folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_engine.errors import EEError, StoreError
from ensemble_engine.graph import load_graph, plan
from ensemble_engine.store import check_name, open_store, parse_id
from ensemble_engine.validate import validate_store

CLASSES = ["a", "b", "c"]
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Two splits; m1/m2 logits with loss and test_size facts, labels, a class-subset model."""
    path = tmp_path_factory.mktemp("props") / "s.zarr"
    store = open_store(path, "w")
    store.set_classes(CLASSES)
    rng = np.random.default_rng(1)
    store.add_split("val", [f"v{i}" for i in range(10)], rng.integers(0, 3, 10))
    store.add_split("test", [f"t{i}" for i in range(6)])
    for split in ("val", "test"):
        n = store.split(split).n
        for name, loss, size in (("m1", "ce", 32), ("m2", "focal", 64)):
            meta = {"source": {"type": "producer", "plugin": "t"}, "loss": loss, "test_size": size}
            store.write_prediction(
                name, split, kind="logits", scores=rng.normal(size=(n, 3)), meta=meta
            )
        store.write_prediction("lab", split, kind="labels", labels=rng.integers(0, 3, n))
        store.write_prediction(
            "cov-x",
            split,
            kind="logits",
            classes=["a", "__other__"],
            scores=rng.normal(size=(n, 2)),
        )
    return path


# --- graph documents --------------------------------------------------------------------------


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` nine times in ten: documents should get far enough to exercise the planner."""
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda ok: good if ok else bad)


WORDS = st.sampled_from(
    ["m1", "m2", "m*", "!m2", "lab", "cov-*", "x", "y", "{loss}", "{size}", "auto", "val", "test"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 400)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=6)
    | WORDS
)
KEYS = st.sampled_from(["where", "base", "specialists", "inputs", "loss", "test_size", "name"])
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
SELECTION = mostly(
    WORDS
    | st.lists(WORDS, min_size=1, max_size=3)
    | st.fixed_dictionaries(
        {"where": st.dictionaries(KEYS, WORDS | st.sampled_from([32, 64]), max_size=2)}
    )
    | st.fixed_dictionaries({"base": WORDS, "specialists": st.lists(WORDS, max_size=2)}),
    JSON,
)
COMBINERS = ["soft_vote", "hard_vote", "coverage", "stacking", "select", "calibrate"]
PARAMS = st.dictionaries(
    st.sampled_from(["weights", "temperature", "policy", "bogus"]),
    st.sampled_from(["uniform", "softmax_score", 1.0, 0.5, "base_gated"]) | SCALARS,
    max_size=2,
)
# placeholder -> the attribute it fills in a where, and values for its foreach
PLACEHOLDERS = {
    "loss": ("loss", st.sampled_from(["auto", ["ce", "focal"], ["ce"], ["dice"]])),
    "size": ("test_size", st.sampled_from(["auto", [32, 64], [32], [128]])),
}


@st.composite
def nodes(draw: st.DrawFn) -> tuple[object, object]:
    """A node id and its body; an id with placeholders usually gets a foreach and a where."""
    node_id = draw(
        mostly(st.sampled_from(["x", "y", "m1", "final", "s_{loss}", "n_{size}"]), SCALARS)
    )
    body: dict = {
        "combiner": draw(mostly(st.sampled_from([*COMBINERS, "os:system"]), SCALARS)),
        "inputs": draw(SELECTION),
    }
    used = [p for p in PLACEHOLDERS if f"{{{p}}}" in str(node_id)]
    if used and draw(mostly(st.just(True), st.just(False))):
        body["foreach"] = {p: draw(mostly(PLACEHOLDERS[p][1], JSON)) for p in used}
        body["inputs"] = {"where": {PLACEHOLDERS[p][0]: f"{{{p}}}" for p in used}}
    for key, values in (("params", mostly(PARAMS, JSON)), ("description", SCALARS)):
        if draw(st.booleans()):
            body[key] = draw(values)
    return node_id, draw(mostly(st.just(body), JSON))


@st.composite
def graph_documents(draw: st.DrawFn) -> object:
    """Mostly graph-shaped mappings (the output usually one of the nodes), sometimes any JSON."""
    if not draw(mostly(st.just(True), st.just(False))):
        return draw(JSON)
    pairs = draw(st.lists(nodes(), min_size=1, max_size=3))
    graph_nodes = draw(mostly(st.just(dict(pairs)), JSON))
    ids = [k for k, _ in pairs]
    document = {
        "version": draw(mostly(st.just(1), st.sampled_from([2, "1", None]))),
        "fit": draw(mostly(st.just("val"), st.sampled_from(["test", "nope"]) | SCALARS)),
        "apply": draw(mostly(st.sampled_from(["test", ["val", "test"]]), JSON)),
        "nodes": graph_nodes,
        "output": draw(mostly(st.sampled_from(ids), SCALARS)),
    }
    extra = st.sampled_from(["description", "store", "colour"])
    document.update(draw(st.dictionaries(extra, mostly(st.text(max_size=6), SCALARS), max_size=1)))
    return document


GRAPH = graph_documents()


@SETTINGS
@given(document=GRAPH)
def test_any_graph_document_plans_or_raises_an_ee_error(template, tmp_path, document):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    store = open_store(template, "r")
    try:
        plan(load_graph(path), store)
    except EEError as exc:
        assert "\n" not in str(exc)


# --- hand-edited attrs ------------------------------------------------------------------------

ATTR_KEYS = st.sampled_from(
    [
        "ee",
        "classes",
        "class_names",
        "kind",
        "split",
        "split_fingerprint",
        "complete",
        "metrics",
        "source",
        "fingerprint",
        "n",
    ]
)
ATTR_VALUES = (
    JSON
    | st.sampled_from(["logits", "labels", "probs", "val", "test", "sha256:0000000000000000"])
    | st.just({"format": "ee.predictions", "version": 1})
    | st.lists(st.sampled_from(["a", "b", "c", "__other__", "z"]), max_size=4)
)
WHERE = st.sampled_from(["", "splits/val", "splits", "predictions/m1/val", "predictions/lab/test"])


def read_everything(path: Path) -> None:
    """What ``ee ls`` and ``ee export`` do: open, list, and read every listed prediction."""
    store = open_store(path, "r")
    assert isinstance(store.classes, list)
    for split in store.split_names():
        store.split(split)
    for pred in store.list():
        assert pred.metrics is not None
        store.read(pred.name, pred.split)


@settings(SETTINGS, max_examples=30)
@given(
    where=WHERE, changes=st.dictionaries(ATTR_KEYS | st.text(max_size=4), ATTR_VALUES, max_size=3)
)
def test_any_hand_edited_attrs_read_or_raise_an_ee_error(template, where, changes):
    meta = template / where / "zarr.json"
    original = meta.read_bytes()
    try:
        group = zarr.open_group(str(template), mode="r+")
        (group[where] if where else group).attrs.update(changes)
        problems = validate_store(str(template))
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
        try:
            read_everything(template)
        except EEError as exc:
            assert "\n" not in str(exc)
            assert problems, f"validate found nothing, but reading failed after {where}: {changes}"
    finally:
        meta.write_bytes(original)


# --- names ------------------------------------------------------------------------------------

PIECES = list("ab1._-+=,/\\:*? \x00é") + ["..", "%2e"]
NAMES = st.lists(st.sampled_from(PIECES), max_size=8).map("".join) | st.sampled_from(
    ["..", ".", "../x", "a/../b", "/etc", "x/", "con", "a..b", "-x", "ok-name"]
)


def _stays_inside(name: str, base: Path) -> bool:
    target = (base / name).resolve()
    return target.parent == base.resolve() and target.name == name


@settings(max_examples=100, deadline=None, database=None)
@given(name=NAMES)
def test_names_are_accepted_only_if_they_stay_in_their_folder(name):
    base = Path("/srv/store/predictions")
    try:
        check_name(name, "prediction name")
    except StoreError:
        return
    assert _stays_inside(name, base), name
    assert not set(name) & set("/\\\x00:*? ") and not name.startswith((".", "-"))


@settings(max_examples=100, deadline=None, database=None)
@given(left=NAMES, right=NAMES)
def test_prediction_ids_split_into_two_safe_names(left, right):
    try:
        name, split = parse_id(f"{left}/{right}")
    except StoreError:
        return
    assert (name, split) == (left, right)
    base = Path("/srv/store/predictions")
    assert _stays_inside(name, base) and _stays_inside(split, base / name)


@settings(max_examples=25, deadline=None, database=None)
@given(name=NAMES)
def test_a_write_under_any_name_lands_inside_the_store_or_nowhere(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("names")
    store = open_store(root / "s.zarr", "w")
    store.set_classes(CLASSES)
    store.add_split("val", ["x", "y"], [0, 1])
    before = {p for p in root.rglob("*") if not p.is_relative_to(root / "s.zarr")}
    try:
        store.write_prediction(name, "val", kind="logits", scores=np.zeros((2, 3)))
    except StoreError:
        assert not (root / "s.zarr" / "predictions").exists()
        written = False
    else:
        written = True
        assert (root / "s.zarr" / "predictions" / name / "val" / "zarr.json").is_file()
    after = {p for p in root.rglob("*") if not p.is_relative_to(root / "s.zarr")}
    outside = {p for p in after - before if not p.parent.name.endswith(".locks")}
    assert outside <= {root / ".s.zarr.locks"}, outside
    assert not written or _stays_inside(name, root / "s.zarr" / "predictions")
