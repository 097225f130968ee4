"""``ee ls``, ``ee validate`` and ``ee store init``: looking at and setting up a store."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..data import open_dataset, register_splits
from ..errors import StoreError
from ..location import store_exists, store_location
from ..store import Prediction, open_store

FACTS = ("backbone", "loss", "test_size", "tta", "seed", "combiner")


def prediction_row(pred: Prediction) -> dict:
    source = pred.source
    return {
        "id": pred.id,
        "name": pred.name,
        "split": pred.split,
        "kind": pred.kind,
        "shape": list(pred.shape),
        "source": {k: source.get(k) for k in ("type", "plugin") if k in source},
        "facts": {k: pred.attrs[k] for k in _fact_keys(pred) if k in pred.attrs},
        "metrics": pred.metrics,
        "cost": pred.attrs.get("cost"),  # None: cost unknown (schemas/README.md, "Cost")
        **({"covered": covered} if (covered := covered_top1(pred)) else {}),
    }


def _fact_keys(pred: Prediction) -> list[str]:
    """The facts every producer writes, then those an import was given (``--fact``)."""
    params = pred.source.get("params")
    given = params.get("facts") if isinstance(params, dict) else None
    extra = [str(k) for k in given] if isinstance(given, list) else []
    return list(dict.fromkeys([*FACTS, *extra]))


def covered_top1(pred: Prediction) -> dict[str, float | None]:
    """A coverage node's state on this split: each specialist's covered result's top-1."""
    state = pred.attrs.get("state")
    covered = state.get("covered") if isinstance(state, dict) else None
    if not isinstance(covered, dict):
        return {}
    return {str(k): v.get("top1") if isinstance(v, dict) else None for k, v in covered.items()}


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


# The table's columns in display order, and the order in which they are kept when the terminal
# is too narrow for all of them: the id and top-1 always, facts (folded onto several lines when
# needed) before the rest. Rich would otherwise shrink every column to nothing at 80 columns.
COLUMNS = ("id", "kind", "shape", "source", "facts", "top1", "top5", "nll", "gflops")
KEEP_ORDER = ("id", "top1", "facts", "kind", "top5", "nll", "gflops", "source", "shape")
HEADERS = {"gflops": "GFLOPs"}  # a column's header where it is not its name
NUMERIC = ("top1", "top5", "nll", "gflops")
FACTS_MIN_WIDTH = 16


def _cell(row: dict, column: str) -> str:
    if column in ("top1", "top5", "nll"):
        return _fmt(row["metrics"].get(column))
    if column == "gflops":  # per image, every view; "?": cost unknown
        gflops = (row.get("cost") or {}).get("gflops")
        return "?" if gflops is None else f"{gflops:.4g}"
    if column == "shape":
        return "×".join(map(str, row["shape"]))
    if column == "source":
        return "/".join(str(v) for v in row["source"].values())
    if column == "facts":
        return " ".join(
            [f"{k}={_fact(v)}" for k, v in row["facts"].items()]
            + [f"covered {k}={_fmt(v)}" for k, v in row.get("covered", {}).items()]
        )
    return str(row[column])


def _fact(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _natural(cells: dict[str, list[str]], column: str) -> int:
    return max([len(HEADERS.get(column, column)), *(len(c) for c in cells[column])])


def fitting_columns(cells: dict[str, list[str]], width: int) -> list[str]:
    """The columns that fit ``width`` (each takes its widest cell plus 3 for padding and rule),
    kept in ``KEEP_ORDER``; facts fold down to ``FACTS_MIN_WIDTH``. Display order is kept."""
    used, kept = 1, set()  # the table's left rule
    for column in (c for c in KEEP_ORDER if c in cells):
        need = _natural(cells, column)
        if column == "facts":
            need = min(need, FACTS_MIN_WIDTH)
        if column == "id" or used + need + 3 <= width:
            kept.add(column)
            used += need + 3
    return [c for c in COLUMNS if c in kept]


@click.command("ls")
@click.argument("store")
@click.option("--split", help="Only predictions of this split.")
@click.option("--pattern", default="*", show_default=True, help="fnmatch pattern on names.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls_command(store: str, split: str | None, pattern: str, as_json: bool) -> None:
    """List the complete predictions in STORE with their key facts and metrics."""
    st = open_store(store, "r")
    if split is not None and split not in st.split_names():
        st.split(split)  # names the known splits and how to register one
    rows = [prediction_row(p) for p in st.list(pattern, split=split)]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "store": st.path,
                    "classes": st.classes,
                    "splits": {s: st.split(s).n for s in st.split_names()},
                    "predictions": rows,
                },
                indent=2,
            )
        )
        return
    cells = {column: [_cell(r, column) for r in rows] for column in COLUMNS}
    console = Console()
    shown = fitting_columns(cells, console.width)
    hidden = [c for c in COLUMNS if c not in shown]
    table = Table(
        title=f"{st.path}: {len(st.classes)} classes, splits "
        + ", ".join(f"{s} ({st.split(s).n})" for s in st.split_names()),
        caption=f"not shown at {console.width} columns: {', '.join(hidden)} (--json shows all)"
        if hidden and rows
        else None,
    )
    for column in shown:
        table.add_column(
            HEADERS.get(column, column),
            justify="right" if column in NUMERIC else "left",
            no_wrap=column != "facts",
            overflow="fold",
            min_width=min(FACTS_MIN_WIDTH, _natural(cells, column)) if column == "facts" else None,
        )
    for i in range(len(rows)):
        table.add_row(*(cells[c][i] for c in shown))
    Console().print(table)
    if not rows:
        click.echo("no predictions yet: run `ee produce` or `ee import`", err=True)


@click.command("validate")
@click.argument("store")
@click.option("--deep", is_flag=True, help="Also read every chunk and verify its checksum.")
def validate_command(store: str, deep: bool) -> None:
    """Check STORE against the format spec; exit 0 if valid, 1 listing every problem.

    Exit 2 when STORE is no store at all (a missing path, a plain folder, a file)."""
    from ..validate import validate_store

    if not store_exists(store):  # a typo or a plain folder: nothing to list problems of
        raise StoreError(
            f"{store_location(store)} is not an ee store (no zarr.json there); create one with "
            "`ee store init STORE --data DIR`, or check the path"
        )
    warnings: list[str] = []  # an interrupted replace's leftovers: said, not failed
    problems = validate_store(store, deep=deep, warnings=warnings)
    for warning in warnings:
        click.echo(f"{store}: warning: {warning}", err=True)
    if not problems:
        click.echo(f"{store}: valid ee prediction store (format v1)")
        return
    for problem in problems:
        click.echo(f"{store}: {problem}", err=True)
    raise SystemExit(1)


@click.group("store")
def store_group() -> None:
    """Set up prediction stores."""


@store_group.command("init")
@click.argument("store")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Image folder (VIPriors layout or ImageFolder); default: the embedded digits.",
)
@click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them.")
@click.option(
    "--replace-splits",
    is_flag=True,
    help="Re-register splits whose images changed (fixed, added, removed). Refused for a split "
    "that predictions were made on: they would no longer align.",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    metavar="FRACTION",
    help="Also register the split `holdout`: FRACTION of every class of train+val (the seed's "
    "fusion split). Producers then train on train+val minus it, validate and predict on it.",
)
@click.option(
    "--holdout-seed",
    type=click.IntRange(min=0),
    metavar="N",
    help="Seed of the holdout draw (default 0; with --holdout).",
)
def store_init_command(
    store: str,
    data_dir: Path | None,
    strict: bool,
    replace_splits: bool,
    holdout: float | None,
    holdout_seed: int | None,
) -> None:
    """Create STORE (if needed) and register the splits of a data folder.

    Every producer writes rows in the order registered here, so predictions align. A data
    folder whose splits changed since they were registered is refused; --replace-splits
    registers them anew where no prediction was made on them yet.

    With --holdout FRACTION (the seed's setup: train on train+val, fuse on a new split), a
    stratified, seeded share of train+val is registered as the split `holdout`, ids prefixed
    with their split (train/3/x.png), and recorded in the store. `ee produce` then trains on
    train+val minus holdout, validates on holdout and predicts holdout and test; fuse with
    `ee combine GRAPH --fit holdout` (apply: holdout and test).

    \b
    Example:
      ee store init vip.zarr --data ./vipriors --holdout 0.2
    """
    from ..holdout import HoldoutRecord, HoldoutSource, with_store_holdout

    if holdout_seed is not None and holdout is None:
        raise click.UsageError("--holdout-seed needs --holdout FRACTION")
    record = None if holdout is None else HoldoutRecord(holdout, holdout_seed or 0)
    params = {"strict": strict} if data_dir is not None else {}
    source = open_dataset(data_dir, **params)
    for split in source.split_names():
        source.samples(split)  # every unreadable file or empty folder is found before a write
    if record is not None:
        source = HoldoutSource(source, record)
        source.training_samples()  # a class too small to hold out of is found before a write
    st = open_store(store, "a")
    st.check_holdout(record)  # a holdout drawn otherwise is refused before a write
    if record is None:
        source = with_store_holdout(source, st)  # the store's holdout is checked as well
    before = {s: st.split_header(s).fingerprint for s in st.split_names()}
    fps = register_splits(st, source, replace=replace_splits)
    if record is not None:
        st.set_holdout(record)
    for split, fp in fps.items():
        again = f", re-registered (was {before[split]})" if before.get(split, fp) != fp else ""
        click.echo(f"{split}: {st.split(split).n} samples ({fp}){again}")
    if isinstance(source, HoldoutSource):
        click.echo(
            f"{source.record.split}: held out of {'+'.join(source.record.sources)} "
            f"({source.record.describe()}); producers train on the rest and predict it, graphs "
            f"fit on it: `ee combine GRAPH --fit holdout`"
        )
