"""``ee combine`` and ``ee graphs``: run a fusion graph over a store; list the shipped graphs."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import GraphError, StoreError
from ..graph import NodeResult, Plan, execute, load_graph, parse_set_option, plan, shipped_graphs
from ..graph.source import GraphSpec
from ..holdout import HOLDOUT_SPLIT
from ..store import PredictionStore, open_store
from .produce import split_list

DEFAULT_STORE = "ee.zarr"


@click.command("combine")
@click.argument("graph")
@click.option(
    "--store",
    "store_path",
    metavar="STORE",
    help="Prediction store (default: the graph's store: key, else ./ee.zarr).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Replace a foreach placeholder's values in every node (or KEY=auto).",
)
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Print the expanded graph and what is cached; write nothing.",
)
@click.option(
    "--output",
    "output",
    metavar="NODE",
    help="Run NODE and the nodes it reads only (e.g. stage2 before specialists exist); "
    "the rest of the graph is not checked and is listed as left out.",
)
@click.option(
    "--fit",
    "fit",
    metavar="SPLIT",
    help="Fit on SPLIT instead of the graph's fit split (which it also replaces in apply), e.g. "
    "the held-out split of `ee store init --holdout`: --fit holdout.",
)
@click.option(
    "--apply",
    "apply",
    metavar="A,B",
    help="Write these splits instead of the graph's apply splits (the fit split is always "
    "written).",
)
@click.option("--force", is_flag=True, help="Recompute every node, cached or not.")
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    metavar="K",
    help="Processes that write each node's rows side by side (same result as 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def combine_command(
    graph: str,
    store_path: str | None,
    sets: tuple[str, ...],
    plan_only: bool,
    output: str | None,
    fit: str | None,
    apply: str | None,
    force: bool,
    workers: int,
    as_json: bool,
) -> None:
    """Fuse stored predictions by running the graph GRAPH.

    GRAPH is a graph.yaml path or the name of a shipped graph (`ee graphs`). Every node
    writes a prediction named by its id on the fit and apply splits. Nodes whose inputs,
    params and combiner are unchanged since the last run are not recomputed.

    \b
    On a store with a held-out split (`ee store init --holdout`), fuse on it (a graph
    that fits on another split is refused there unless --fit names it):
      ee combine vipriors2021 --fit holdout     # fit: holdout, apply: [holdout, test]
    """
    spec = load_graph(graph, parse_set_option(sets))
    path = store_path or spec.store or DEFAULT_STORE
    reading = open_store(path, "r")
    if fit is not None or apply is not None:
        override_splits(spec, reading, fit, apply)
    else:
        check_holdout_fit(spec, reading)
    the_plan = plan(spec, reading, output=output)
    if the_plan.left_out:
        click.echo(
            f"left out (not read by {the_plan.output}): {_short(the_plan.left_out, 8)}", err=True
        )
    if plan_only:
        for node in the_plan.nodes if force else ():
            node.cached = False  # show what a forced run would do
        _print_plan(the_plan, as_json)
        return
    store = open_store(path, "a")
    results = execute(the_plan, store, force=force, console=Console(stderr=True), workers=workers)
    _print_results(the_plan, results, as_json)


def override_splits(
    spec: GraphSpec, store: PredictionStore, fit: str | None, apply: str | None
) -> None:
    """``--fit``/``--apply`` in place of the graph's ``fit:``/``apply:``; a split the store
    lacks is refused here, naming the option rather than the graph file's line."""
    new_apply = (
        split_list(apply, str, "--apply")
        if apply is not None
        else [fit if s == spec.fit else s for s in spec.apply]
    )
    known = store.split_names()
    for option, names in (("--fit", [fit] if fit else []), ("--apply", new_apply)):
        missing = [n for n in names if n not in known]
        if missing:
            hint = " --holdout 0.2" if missing[0] == HOLDOUT_SPLIT else ""
            raise StoreError(
                f"{option} {missing[0]}: store {store.path} has no split {missing[0]!r} "
                f"(splits: {', '.join(known) or 'none'}); register it with `ee store init "
                f"{store.path} --data DIR{hint}`, or name another split"
            )
    spec.fit = fit or spec.fit
    spec.apply = list(dict.fromkeys(new_apply))


def check_holdout_fit(spec: GraphSpec, store: PredictionStore) -> None:
    """A store with a held-out split has its models trained on val: a graph that fits on val
    there is refused, naming ``--fit`` (nothing is switched behind the user's back)."""
    record = store.holdout_record()
    if record is not None and spec.fit != record.split:
        raise GraphError(
            f"{spec.source} fits on {spec.fit!r}, but store {store.path} holds the held-out "
            f"split {record.split!r} that its producers validate on (they trained on "
            f"{'+'.join(record.sources)}): add --fit {record.split}, or --fit {spec.fit} to fit "
            f"on {spec.fit} all the same"
        )


@click.command("graphs")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def graphs_command(as_json: bool) -> None:
    """List the shipped fusion graphs (run one with `ee combine NAME`)."""
    rows = []
    for name in sorted(shipped_graphs()):
        spec = load_graph(name)
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "nodes": [t.key for t in spec.nodes],
                "output": spec.output,
                "fit": spec.fit,
                "apply": spec.apply,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("graph", "description", "nodes", "fit → apply")
    for r in rows:
        table.add_row(
            r["name"],
            r["description"],
            ", ".join(r["nodes"]),
            f"{r['fit']} → {', '.join(r['apply'])}",
        )
    Console().print(table)


def plan_rows(the_plan: Plan) -> list[dict]:
    return [
        {
            "id": n.id,
            "combiner": n.combiner,
            "plugin": n.plugin,
            "params": n.params,
            "inputs": {role: [r.name for r in refs] for role, refs in n.roles.items()},
            "cached": n.cached,
            "node_hash": n.node_hash,
        }
        for n in the_plan.nodes
    ]


def _header(the_plan: Plan) -> dict:
    return {
        "graph": the_plan.spec.source,
        "store": the_plan.store_path,
        "fit": the_plan.fit,
        "splits": the_plan.splits,
        "output": the_plan.output,
        "left_out": the_plan.left_out,
    }


def _short(names: list[str], n: int = 4) -> str:
    more = f", … (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _print_plan(the_plan: Plan, as_json: bool) -> None:
    rows = plan_rows(the_plan)
    if as_json:
        click.echo(json.dumps({**_header(the_plan), "nodes": rows}, indent=2))
        return
    table = Table(
        "node",
        "combiner",
        "inputs",
        "status",
        title=f"{the_plan.spec.source} on {the_plan.store_path}: fit {the_plan.fit}, "
        f"writes {', '.join(the_plan.splits)}",
    )
    for r in rows:
        inputs = "; ".join(f"{role}: {_short(names)}" for role, names in r["inputs"].items())
        table.add_row(
            r["id"] + (" (output)" if r["id"] == the_plan.output else ""),
            r["combiner"],
            inputs,
            "cached" if r["cached"] else "to compute",
        )
    Console().print(table)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _print_results(the_plan: Plan, results: list[NodeResult], as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({**_header(the_plan), "nodes": [asdict(r) for r in results]}, indent=2)
        )
        return
    table = Table(
        title=f"{the_plan.spec.source} on {the_plan.store_path}",
        caption="* output; gain: top-1 minus the best input's; --json for more",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("node", no_wrap=True, min_width=max(len(r.id) + 2 for r in results))
    table.add_column("status", no_wrap=True, min_width=6)
    for split in the_plan.splits:
        table.add_column(f"{split} top1/top5", justify="right", no_wrap=True)
        table.add_column("gain", justify="right", no_wrap=True, min_width=6)
    for r in results:
        cells = [r.id + (" *" if r.id == the_plan.output else ""), "cached" if r.cached else "new"]
        for split in the_plan.splits:
            m = r.metrics.get(split, {})
            top = "/".join(_fmt(m.get(k)) or "-" for k in ("top1", "top5"))
            cells += [top if m else "", _fmt(r.gain.get(split), signed=True)]
        table.add_row(*cells)
    Console().print(table)
