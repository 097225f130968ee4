"""``ee ls`` in a narrow terminal: the id and top-1 stay readable, other columns give way whole.

Rich shrinks every column of a too-wide table, down to nothing: at 80 columns the kind, shape,
source and facts columns showed empty. ``ee ls`` now keeps columns by priority and says which
it left out.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble_engine.cli import build_cli
from ensemble_engine.commands.store import fitting_columns
from ensemble_engine.store import open_store


@pytest.fixture
def store_path(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes([str(i) for i in range(10)])
    st.add_split("val", [f"val/{i % 10}/{i}.png" for i in range(50)], np.arange(50) % 10)
    rng = np.random.default_rng(0)
    for backbone in ("test_efficientnet_evos", "resnet18"):
        for loss in ("bi_tempered", "ce"):
            meta = {
                "source": {"type": "producer", "plugin": "timm"},
                "backbone": backbone,
                "loss": loss,
                "test_size": 32,
                "tta": ["identity", "hflip"],
            }
            st.write_prediction(
                f"{backbone}-{loss}-s32",
                "val",
                kind="logits",
                scores=rng.normal(size=(50, 10)),
                meta=meta,
            )
    return tmp_path / "s.zarr"


def ls(store_path, columns: int) -> str:
    result = CliRunner().invoke(build_cli(), ["ls", str(store_path)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_at_80_columns_ids_and_top1_are_whole_and_the_rest_is_named(store_path):
    out = ls(store_path, 80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    top1 = {p.name: p.attrs["metrics"]["top1"] for p in open_store(store_path, "r").list()}
    for name, value in top1.items():
        row = next(line for line in lines if f"{name}/val" in line)  # the id is never cut
        assert f"{value:.4f}" in row
    assert "loss=bi_tempered" in out and "tta=identity,hflip" in out  # facts fold, not vanish
    caption = "not shown at 80 columns: kind, shape, source, top5, nll, gflops (--json shows all)"
    assert caption in " ".join(out.split())  # the caption wraps at 80 columns


def test_a_wide_terminal_shows_every_column(store_path):
    out = ls(store_path, 220)
    header = next(line for line in out.splitlines() if "┃ id" in line)
    for column in ("kind", "shape", "source", "facts", "top1", "top5", "nll", "GFLOPs"):
        assert column in header
    assert "not shown" not in out


def test_columns_give_way_in_priority_order():
    cells = {c: ["x" * 10] for c in ("id", "kind", "shape", "source", "facts", "top1")}
    cells |= {"top5": ["0.5000"], "nll": ["1.0000"]}
    # id 10+3, top1 10+3, facts 10+3, kind 10+3 = 52 plus the left rule
    assert fitting_columns(cells, 53) == ["id", "kind", "facts", "top1"]
    # one short of kind: a narrower column further down the order still fits (top5, 6+3)
    assert fitting_columns(cells, 52) == ["id", "facts", "top1", "top5"]
    assert fitting_columns(cells, 5) == ["id"]  # the id is kept whatever the width
