"""``ee report``: a self-contained HTML page whose numbers match independently computed ones.

A synthetic store holds 4 producers × 2 test sizes, a specialist over two classes plus
``__other__``, two soft votes, a hard vote and a coverage node, written with known arrays so
every top-1, gain, error correlation and per-class accuracy can be recomputed here with numpy.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from ee_report.dag import build_dag
from ee_report.data import error_agreement, gather, producer_top1
from ee_report.report import build_report, load_graph_spec, write_report

from ensemble_engine.combiner import OTHER
from ensemble_engine.store import open_store

CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5"]
NAMES = ["zero", "one", "two", "three", "four", "five"]
BACKBONES = ("resnet18", "mobilenetv3")
LOSSES = ("ce", "taylor_ce")
SIZES = (224, 320)
N = 120
NODES = ("soft_224", "soft_320", "stage2", "final")
FIGURES = ("fig-producers", "fig-agreement", "fig-coverage", "fig-fusion", "fig-frontier")
GFLOPS = {"resnet18": 1.8, "mobilenetv3": 0.2}  # per image at 224 px, × (size / 224)²


def producers(size: int) -> list[str]:
    return [f"{backbone}-{loss}-{size}" for backbone in BACKBONES for loss in LOSSES]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def gflops(name: str) -> float:
    backbone, _, size = name.rsplit("-", 2)
    return GFLOPS[backbone] * (int(size) / 224) ** 2


def cost(names: list[str]) -> dict:
    """A ``cost`` attr (issue 21) over producers ``names``."""
    return {
        "gflops": sum(gflops(n) for n in names),
        "params": None,
        "views": 1,
        "images_per_s": None,
        "device": None,
        "members": sorted(names),
    }


def producer_meta(backbone: str, loss: str, size: int) -> dict:
    return {
        "backbone": backbone,
        "loss": loss,
        "test_size": size,
        "tta": "identity",
        "source": {"type": "producer", "plugin": "ee_timm"},
        "cost": cost([f"{backbone}-{loss}-{size}"]),
    }


def combiner_meta(combiner: str, inputs: list[str], roles: dict | None = None) -> dict:
    meta = {"combiner": combiner, "inputs": inputs, "source": {"type": "combiner"}}
    if roles:
        meta["roles"] = roles
    return meta


def build_store(path: Path) -> dict:
    """Write the store; return every array written, by (name, split), plus the labels."""
    rng = np.random.default_rng(7)
    st = open_store(path, "w")
    st.set_classes(CLASSES, NAMES)
    arrays: dict = {}
    labels = {}
    for split in ("val", "test"):
        y = rng.integers(0, len(CLASSES), N)
        labels[split] = y
        st.add_split(split, [f"{split}/{i:04d}.png" for i in range(N)], y)
        onehot = np.eye(len(CLASSES))[y]
        soft = {}
        for b, backbone in enumerate(BACKBONES):
            for j, loss in enumerate(LOSSES):
                for size in SIZES:
                    name = f"{backbone}-{loss}-{size}"
                    strength = 0.8 + 0.4 * b + 0.3 * j + size / 640
                    logits = strength * onehot + rng.normal(0, 1, onehot.shape)
                    st.write_prediction(
                        name,
                        split,
                        kind="logits",
                        scores=logits,
                        dtype="float32",
                        meta=producer_meta(backbone, loss, size),
                    )
                    arrays[(name, split)] = logits
                    soft.setdefault(size, []).append(softmax(logits))
        for size, probs in soft.items():
            name = f"soft_{size}"
            mean = np.mean(probs, axis=0)
            inputs = producers(size)
            st.write_prediction(
                name,
                split,
                kind="probs",
                scores=mean,
                dtype="float32",
                meta={**combiner_meta("soft_vote", inputs), "cost": cost(inputs)},
            )
            arrays[(name, split)] = mean
        votes = sum(np.eye(len(CLASSES))[arrays[(f"soft_{s}", split)].argmax(1)] for s in SIZES)
        tie_break = arrays[("soft_224", split)]
        stage2 = np.argmax(votes + 1e-3 * tie_break, axis=1)
        st.write_prediction(
            "stage2",
            split,
            kind="labels",
            labels=stage2,
            votes=votes,
            meta={
                **combiner_meta("hard_vote", ["soft_224", "soft_320"]),
                "cost": cost(producers(224) + producers(320)),
            },
        )
        arrays[("stage2", split)] = stage2
        # specialist over c1, c2 + __other__: right on 90% of its rows
        spec_truth = np.where(y == 1, 0, np.where(y == 2, 1, 2))
        wrong = rng.random(N) < 0.1
        spec = np.where(wrong, (spec_truth + 1) % 3, spec_truth)
        st.write_prediction(
            "cov-a",
            split,
            kind="labels",
            labels=spec,
            classes=["c1", "c2", OTHER],
            meta=producer_meta("resnet18", "ce", 224),
        )
        arrays[("cov-a", split)] = spec
        spec_store = np.array([1, 2, -1])[spec]
        take = np.isin(stage2, [1, 2]) & (spec_store >= 0)
        final = np.where(take, spec_store, stage2)
        meta = combiner_meta(
            "coverage", ["stage2", "cov-a"], {"base": ["stage2"], "specialists": ["cov-a"]}
        )
        meta["state"] = {  # as coverage records it: one specialist, so its covered result = final
            "policy": "validated",
            "specialists": {"run-a": ["cov-a"]},
            "covered": {"run-a": {"top1": float((final == y).mean())}},
            "decisions": {
                "run-a": {
                    "c1": {"accept": True, "fixes": 3, "breaks": 1},
                    "c2": {"accept": False, "fixes": 0, "breaks": 2},
                }
            },
        }
        st.write_prediction("final", split, kind="labels", labels=final, meta=meta)
        arrays[("final", split)] = final
    return {"arrays": arrays, "labels": labels}


def top1(arrays: dict, labels: dict, name: str, split: str) -> float:
    data, y = arrays[(name, split)], labels[split]
    if name == "cov-a":
        y = np.where(y == 1, 0, np.where(y == 2, 1, 2))
    pred = data if data.ndim == 1 else data.argmax(axis=1)
    return float((pred == y).mean())


class Tables(HTMLParser):
    """Rows of every ``<table id=...>``, and the ``src`` of every ``<img>``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: dict[str, str] = {}
        self._table = self._figure = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "figure":
            self._figure = a["id"]
        elif tag == "img":
            self.images[self._figure] = a["src"]
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self.tables[self._table].append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def rows_by(table: list[list[str]], *keys: str) -> dict[tuple[str, ...], dict[str, str]]:
    head, *body = table
    index = [head.index(k) for k in keys]
    return {tuple(r[i] for i in index): dict(zip(head, r, strict=True)) for r in body}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    truth = build_store(root / "ee.zarr")
    return root, truth


@pytest.fixture(scope="module")
def page(built):
    """``ee report`` run once through the CLI; the parsed page and its text."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    root, _ = built
    out = root / "out" / "report.html"
    result = CliRunner().invoke(build_cli(), ["report", str(root / "ee.zarr"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    parsed = Tables()
    text = out.read_text("utf-8")
    parsed.feed(text)
    return out, text, parsed, result.output


def test_cli_prints_path_and_summary(built, page):
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    out, _, _, output = page
    lines = output.strip().splitlines()
    assert lines[0] == str(out)
    score, best = max((top1(arrays, labels, n, "val"), n) for n in NODES)
    assert lines[1] == (
        f"26 predictions (18 producer, 8 combiner), 5 figures; best {best} top-1 {score:.4f} on val"
    )
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left


def test_embedded_png_figures_and_nothing_external(page):
    _, text, parsed, _ = page
    assert set(parsed.images) == set(FIGURES)
    for src in parsed.images.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(https?:|//)", text)
    assert "<script" not in text


def test_metrics_table_matches_independent_top1(built, page):
    _, truth = built
    rows = rows_by(page[2].tables["metrics"], "prediction", "split")
    assert len(rows) == len(truth["arrays"])
    for name, split in truth["arrays"]:
        want = top1(truth["arrays"], truth["labels"], name, split)
        assert rows[(name, split)]["top-1"] == f"{want:.4f}", (name, split)
    assert rows[("cov-a", "val")]["classes"] == "subset of 3"


def test_frontier_table_matches_independent_pareto(built, page):
    """Every full-class prediction with a cost, on val; marked where none is at least as
    accurate at no more cost and better in one (final, the coverage node, has no cost)."""
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    costs = {n: gflops(n) for s in SIZES for n in producers(s)}
    costs |= {f"soft_{s}": sum(gflops(n) for n in producers(s)) for s in SIZES}
    costs["stage2"] = costs["soft_224"] + costs["soft_320"]
    acc = {n: top1(arrays, labels, n, "val") for n in costs}
    rows = rows_by(page[2].tables["frontier"], "prediction")
    assert set(rows) == {(n,) for n in costs}
    for name, c in costs.items():
        row = rows[(name,)]
        assert float(row["top-1"]) == pytest.approx(acc[name], abs=5e-5)
        assert float(row["GFLOPs"]) == pytest.approx(c, rel=1e-3)
        beaten = any(
            acc[o] >= acc[name] and costs[o] <= c and (acc[o] > acc[name] or costs[o] < c)
            for o in costs
        )
        assert row["on the frontier"] == ("" if beaten else "yes"), name
    assert sum(r["on the frontier"] == "yes" for r in rows.values()) >= 2
    assert "cost unknown: final" in page[1]


def test_node_table_scores_and_gains(built, page):
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    rows = rows_by(page[2].tables["nodes"], "node")
    assert set(rows) == {("soft_224",), ("soft_320",), ("stage2",), ("final",)}
    for split in ("val", "test"):
        t = {n: top1(arrays, labels, n, split) for n, _ in arrays if _ == split}
        soft = max(t[name] for name in producers(224))
        assert rows[("soft_224",)][f"gain {split}"] == f"{t['soft_224'] - soft:+.4f}"
        best_soft = max(t["soft_224"], t["soft_320"])
        assert rows[("stage2",)][f"gain {split}"] == f"{t['stage2'] - best_soft:+.4f}"
        # the specialist's subset top-1 is not comparable: the gain is over stage2 alone
        assert rows[("final",)][f"gain {split}"] == f"{t['final'] - t['stage2']:+.4f}"
        assert rows[("final",)][f"top-1 {split}"] == f"{t['final']:.4f}"
    assert [rows[(n,)]["layer"] for n in ("soft_224", "stage2", "final")] == ["1", "2", "3"]


def test_weak_classes_before_and_after_coverage(built, page):
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    y = labels["val"]
    rows = rows_by(page[2].tables["weak-classes"], "class")
    assert ("one",) in rows and ("two",) in rows
    assert rows[("one",)]["covered by"] == "cov-a"
    for (name,), row in rows.items():
        k = NAMES.index(name)
        before = (arrays[("stage2", "val")][y == k] == k).mean()
        after = (arrays[("final", "val")][y == k] == k).mean()
        assert row["top-1 stage2"] == f"{before:.4f}"
        assert row["top-1 final"] == f"{after:.4f}"
        assert row["n"] == str(int((y == k).sum()))


def test_weak_class_confusion_before_and_after_coverage(built, page):
    """Images of other classes labelled as a weak class (c1, c2: the specialist's) and images of
    a weak class labelled as another, counted here with numpy."""
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    y, weak = labels["val"], [1, 2]
    rows = rows_by(page[2].tables["weak-confusion"], "weak class")
    assert set(rows) == {("one",), ("two",), ("all weak classes",)}
    for name, pred in (("stage2", arrays[("stage2", "val")]), ("final", arrays[("final", "val")])):
        for k in weak:
            row = rows[(NAMES[k],)]
            assert row["n"] == str(int((y == k).sum()))
            assert row[f"pulled in {name}"] == str(int(((pred == k) & ~np.isin(y, weak)).sum()))
            assert row[f"pulled out {name}"] == str(int(((y == k) & ~np.isin(pred, weak)).sum()))
        total = rows[("all weak classes",)]
        inside = np.isin(pred, weak) & ~np.isin(y, weak)
        assert total[f"pulled in {name}"] == str(int(inside.sum()))
    final = arrays[("final", "val")]
    pulled = y[(final == 1) & ~np.isin(y, weak)]
    if len(pulled):
        commonest = np.bincount(pulled).argmax()
        assert rows[("one",)]["from (final)"].startswith(f"{NAMES[commonest]}×")


def test_weak_class_confusion_by_hand(tmp_path):
    # weak class b (the specialist's); truth a a b b c
    # base  a b b c c: pulled in 1 (an a), pulled out 1 (a b labelled c)
    # final b b b b c: pulled in 2 (both a), pulled out 0
    from ee_report.coverage_tables import weak_confusion
    from ee_report.data import coverage_view

    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [str(i) for i in range(5)], [0, 0, 1, 1, 2])
    prod = {"source": {"type": "producer"}}
    st.write_prediction("base", "val", kind="labels", labels=[0, 1, 1, 2, 2], meta=prod)
    st.write_prediction("spec", "val", kind="labels", labels=[0, 0, 0, 0, 1],
                        classes=["b", OTHER], meta=prod)  # fmt: skip
    roles = {"base": ["base"], "specialists": ["spec"]}
    meta = combiner_meta("coverage", ["base", "spec"], roles)
    st.write_prediction("final", "val", kind="labels", labels=[1, 1, 1, 1, 2], meta=meta)
    data = gather(open_store(tmp_path / "s.zarr", "r"))
    parsed = Tables()
    parsed.feed(weak_confusion(data, coverage_view(data)[0]))
    head, b, total = parsed.tables["weak-confusion"]
    assert dict(zip(head, b, strict=True)) == {
        "weak class": "b", "n": "2", "pulled in base": "1", "pulled in final": "2",
        "from (final)": "a×2", "pulled out base": "1", "pulled out final": "0", "to (final)": "–",
    }  # fmt: skip
    assert total[1:] == b[1:]


def test_each_specialists_covered_top1_beside_the_base(built, page):
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    y = labels["val"]
    (row,) = rows_by(page[2].tables["covered-results"], "specialist").values()
    covered = (arrays[("final", "val")] == y).mean()
    base = (arrays[("stage2", "val")] == y).mean()
    assert row["specialist"] == "run-a" and row["inputs"] == "cov-a"
    assert row["covered top-1 val"] == f"{covered:.4f}"
    assert row["top-1 stage2"] == f"{base:.4f}"
    assert row["change"] == f"{covered - base:+.4f}"
    assert row["policy validated"] == "accepted: c1 (offered 3 fixes, 3 breaks)"


def test_error_agreement_is_correlation_of_errors(built):
    root, truth = built
    data = gather(open_store(root / "ee.zarr", "r"))
    agreement = error_agreement(data)
    y = truth["labels"]["val"]
    errors = [truth["arrays"][(n, "val")].argmax(1) != y for n in agreement.names]
    np.testing.assert_allclose(agreement.matrix, np.corrcoef(errors), atol=1e-12)
    assert len(agreement.names) == 8 and "cov-a" not in agreement.names
    capped = error_agreement(data, cap=3)
    best = sorted(agreement.names, key=lambda n: -top1(truth["arrays"], truth["labels"], n, "val"))
    assert capped.total == 8 and sorted(capped.names) == sorted(best[:3])


def test_error_agreement_by_hand(tmp_path):
    # errors e1 = [1,0,1,0], e2 = [1,0,0,0]: cov = 1/4 - 1/2·1/4 = 1/8,
    # sd1 = 1/2, sd2 = sqrt(1/4·3/4) = sqrt(3)/4, so phi = (1/8) / (sqrt(3)/8) = 1/sqrt(3)
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b"])
    st.add_split("val", ["0", "1", "2", "3"], [0, 0, 1, 1])
    meta = {"source": {"type": "producer"}}
    st.write_prediction("m1", "val", kind="labels", labels=[1, 0, 0, 1], meta=meta)
    st.write_prediction("m2", "val", kind="labels", labels=[1, 0, 1, 1], meta=meta)
    agreement = error_agreement(gather(st))
    assert agreement.matrix[0, 1] == pytest.approx(1 / np.sqrt(3))


def test_dag_layers_and_graph_order(built, tmp_path):
    root, _ = built
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: [val, test]\nnodes:\n"
        "  stage2: {combiner: hard_vote, inputs: ['soft_*']}\n"
        "  soft_{size}:\n    foreach: {size: [224, 320]}\n    combiner: soft_vote\n"
        "    inputs: {where: {test_size: '{size}'}}\n"
        "  final: {combiner: coverage, inputs: {base: stage2, specialists: ['cov-*']}}\n"
        "output: final\n"
    )
    data = gather(open_store(root / "ee.zarr", "r"))
    dag = build_dag(data, load_graph_spec(graph))
    layers = dag.layers()
    # stages at their longest path from the producers; the specialist, read only by final,
    # sits one layer before it
    assert layers[1:] == [["soft_224", "soft_320"], ["stage2", "cov-a"], ["final"]]
    assert set(layers[0]) == {n for s in SIZES for n in producers(s)}
    assert layers[0][:4] == sorted(producers(224))
    assert dag.nodes["final"].output and not dag.nodes["stage2"].output
    assert dag.title == "graph"
    assert "(3-class subset)" in dag.nodes["cov-a"].label
    collapsed = build_dag(data, collapse_at=4)
    groups = {n.id: n for n in collapsed.nodes.values() if n.kind == "group"}
    assert len(groups) == 2
    for size in SIZES:
        box = next(g for g in groups.values() if (g.id, f"soft_{size}") in collapsed.edges)
        assert sorted(box.members) == sorted(producers(size))
        assert box.label.startswith(f"test_size={size}\n4 predictions, best ")
        best = max(top1(built[1]["arrays"], built[1]["labels"], m, "val") for m in box.members)
        assert box.score == pytest.approx(best)
    assert collapsed.nodes["cov-a"].kind == "producer"  # alone in its reader set: not grouped


def test_store_without_labels_or_combiners(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("test", [str(i) for i in range(10)])
    scores = np.random.default_rng(0).normal(size=(10, 3))
    for size in SIZES:
        st.write_prediction(
            f"m-{size}",
            "test",
            kind="logits",
            scores=scores,
            meta=producer_meta("resnet18", "ce", size),
        )
    report = build_report(open_store(tmp_path / "s.zarr", "r"))
    assert report.figures == []
    assert "no labelled split in this store" in report.html
    assert "no combiner outputs in this store" in report.html
    assert "data:image/png" not in report.html
    out = write_report(report, tmp_path / "r.html")
    assert out.read_text("utf-8") == report.html
    assert report.summary == "2 predictions (2 producer), 0 figures"

    # with labels but no fusion: the accuracy figures, and a word on what is missing
    st = open_store(tmp_path / "s.zarr", "a")
    y = np.arange(10) % 3
    st.add_split("val", [str(i) for i in range(10)], y)
    for size in SIZES:
        st.write_prediction(
            f"m-{size}",
            "val",
            kind="logits",
            scores=scores + size / 100 * np.eye(3)[y],
            meta=producer_meta("resnet18", "ce", size),
        )
    report = build_report(open_store(tmp_path / "s.zarr", "r"))
    assert report.figures == ["fig-producers", "fig-agreement", "fig-frontier"]
    assert "no coverage output on val in this store" in report.html
    assert "no combiner outputs in this store" in report.html

    # without cost facts: no frontier, and the predictions named as of unknown cost
    for size in SIZES:
        meta = producer_meta("resnet18", "ce", size)
        del meta["cost"]
        scores_val = scores + size / 100 * np.eye(3)[y]
        st.write_prediction(
            f"m-{size}", "val", kind="logits", scores=scores_val, meta=meta, replace=True
        )
    report = build_report(open_store(tmp_path / "s.zarr", "r"))
    assert report.figures == ["fig-producers", "fig-agreement"]
    assert "no prediction on val has a known cost" in report.html
    assert "cost unknown: m-224, m-320" in report.html


def test_bar_values_are_producer_top1_by_group_and_size(built):
    arrays, labels = built[1]["arrays"], built[1]["labels"]
    cells = producer_top1(gather(open_store(built[0] / "ee.zarr", "r")))
    assert set(cells) == {"val", "test"}
    for split, cell in cells.items():
        assert set(cell) == {
            (f"{b}-{lo}", str(s)) for b in BACKBONES for lo in LOSSES for s in SIZES
        }
        for (group, size), values in cell.items():
            assert values == [pytest.approx(top1(arrays, labels, f"{group}-{size}", split))]


def test_split_choice(built):
    store = open_store(built[0] / "ee.zarr", "r")
    assert gather(store).splits == ["val", "test"]
    only_test = gather(store, ["test"])
    assert only_test.primary == "test" and only_test.lineage_split() == "test"
    assert error_agreement(only_test).split == "test"


def test_unlabelled_split_asked_for_is_a_user_error(run_cli, tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b"])
    st.add_split("test", ["0", "1"])
    result = run_cli("report", tmp_path / "s.zarr", "--split", "test", "-o", tmp_path / "r.html")
    assert result.exit_code == 2
    assert "has no labels" in result.output and "--split" in result.output
    assert not (tmp_path / "r.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    out = page[0]
    shot = tmp_path / "shot.png"
    common = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=90
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom.stdout)) == len(FIGURES)
    for figure_id in FIGURES:
        assert f'id="{figure_id}"' in dom.stdout
    for section_id in ("producers", "agreement", "coverage", "fusion", "frontier"):
        assert f'<section id="{section_id}">' in dom.stdout
    for table_id in ("weak-classes", "weak-confusion", "covered-results", "frontier"):
        assert f'<table id="{table_id}">' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    run = subprocess.run(
        [*common, "--window-size=1280,1600", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    # the producer bars (tab10 blue, 31 119 180) are drawn at the top of the page
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(axis=1) < 30).sum() > 500
