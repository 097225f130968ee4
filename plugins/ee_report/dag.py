"""The fusion graph as the store records it: nodes from combiner lineage, laid out in layers.

Every combiner output names its ``inputs``; following them back reaches producers (or imports).
A stage's layer is its longest path from a producer, so each stage sits right of all it reads.
With many producers, those read by the same nodes share one box, which keeps the picture
readable when each stage reads dozens of models.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .data import ReportData, is_subset, top1_of

COLLAPSE_AT = 12  # producers drawn one box each up to this many
GROUP_FACTS = ("backbone", "loss", "test_size")


@dataclass
class DagNode:
    id: str
    label: str  # what the box says
    kind: str  # producer | group | combiner | missing
    score: float | None = None
    combiner: str | None = None
    members: list[str] = field(default_factory=list)  # producers of a group box
    layer: int = 0
    output: bool = False


@dataclass
class Dag:
    split: str
    nodes: dict[str, DagNode]
    edges: list[tuple[str, str]]  # (input, node)
    title: str = ""

    def layers(self) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in range(1 + max(n.layer for n in self.nodes.values()))]
        for node_id, node in self.nodes.items():
            out[node.layer].append(node_id)
        return out


def _score(value: float | None) -> str:
    return "top-1 –" if value is None else f"top-1 {value:.4f}"


def build_dag(
    data: ReportData, graph: Any | None = None, collapse_at: int = COLLAPSE_AT
) -> Dag | None:
    """The lineage graph on the lineage split, or None when the store holds no combiner output.

    Past ``collapse_at`` leaves (producers, imports), leaves read by exactly the same nodes
    share one box, labelled with the facts they share: in a staged graph that is one box per
    first-stage node, with a single edge each. ``graph`` (a parsed graph file) only orders nodes
    as the file lists them and marks its output; the nodes and their inputs come from the store.
    """
    split = data.lineage_split()
    if split is None:
        return None
    combiners = {p.name: p for p in data.combiners(split)}
    readers: dict[str, list[str]] = {}
    for name, node in combiners.items():
        for inp in node.attrs.get("inputs") or []:
            if str(inp) not in combiners:
                readers.setdefault(str(inp), []).append(name)
    collapse = len(readers) > collapse_at
    shared: dict[tuple[str, ...], list[str]] = {}
    for name in sorted(readers):
        shared.setdefault(tuple(sorted(readers[name])), []).append(name)
    nodes: dict[str, DagNode] = {}
    alias: dict[str, str] = {}  # leaf name → box id
    for members in shared.values():
        if collapse and len(members) > 1:
            box = _group_box(data, split, members)
            nodes[box.id] = box
            alias.update(dict.fromkeys(members, box.id))
            continue
        for name in members:
            nodes[name] = _leaf_box(data, split, name)
            alias[name] = name
    edges: set[tuple[str, str]] = set()
    for name, pred in combiners.items():
        score = top1_of(pred)
        combiner = str(pred.attrs.get("combiner", "?"))
        nodes[name] = DagNode(
            name, f"{name}\n{combiner} · {_score(score)}", "combiner", score, combiner
        )
        for inp in pred.attrs.get("inputs") or []:
            edges.add((alias.get(str(inp), str(inp)), name))
    _assign_layers(nodes, edges)
    dag = Dag(split, nodes, sorted(edges), title=_title(data, combiners, graph))
    _order(dag, graph)
    return dag


def _leaf_box(data: ReportData, split: str, name: str) -> DagNode:
    pred = data.get(name, split)
    if pred is None:
        return DagNode(name, f"{name}\n(not in store)", "missing")
    score = top1_of(pred)
    label = f"{name}\n{_score(score)}"
    if is_subset(data.store, pred):
        label += f" ({len(data.store.classes_of(pred))}-class subset)"
    return DagNode(name, label, "producer", score)


def _group_box(data: ReportData, split: str, members: list[str]) -> DagNode:
    """One box for leaves with the same readers, named by the facts all of them share."""
    found = [p for p in (data.get(m, split) for m in members) if p is not None]
    facts = []
    for key in GROUP_FACTS:
        values = {str(p.attrs.get(key)) for p in found}
        if len(values) == 1 and found[0].attrs.get(key) is not None:
            facts.append(f"{key}={values.pop()}")
    if found and all(is_subset(data.store, p) for p in found):
        facts.insert(0, "specialists")
    title = ", ".join(facts) or f"{members[0]} and others"
    scores = [s for s in (top1_of(p) for p in found) if s is not None]
    best = max(scores) if scores else None
    label = f"{title}\n{len(members)} predictions, best {'–' if best is None else f'{best:.4f}'}"
    return DagNode(f"group:{members[0]}", label, "group", best, members=list(members))


def _assign_layers(nodes: dict[str, DagNode], edges: set[tuple[str, str]]) -> None:
    """A node's layer is its longest path from a leaf (lineage is acyclic, so relaxing |V|
    times settles it). A leaf then moves right to just before its first reader, so that a
    specialist read only by the last stage sits beside it instead of far left."""
    for _ in range(len(nodes)):
        changed = False
        for src, dst in edges:
            if nodes[dst].layer < nodes[src].layer + 1:
                nodes[dst].layer = nodes[src].layer + 1
                changed = True
        if not changed:
            break
    for node_id, node in nodes.items():
        if node.kind != "combiner":
            readers = [nodes[dst].layer for src, dst in edges if src == node_id]
            node.layer = max(0, min(readers, default=1) - 1)


def _title(data: ReportData, combiners: dict[str, Any], graph: Any | None) -> str:
    names = {
        str(p.attrs.get("graph_name")) for p in combiners.values() if p.attrs.get("graph_name")
    }
    if graph is not None and getattr(graph, "name", ""):
        names = {str(graph.name)}
    return ", ".join(sorted(n for n in names if n))


def _template_rank(graph: Any | None) -> list[re.Pattern[str]]:
    """One pattern per node template of the graph file, in file order."""
    if graph is None:
        return []
    patterns = []
    for template in getattr(graph, "nodes", []):
        parts = re.split(r"\{[^}]*\}", str(template.key))
        patterns.append(re.compile("^" + ".+?".join(re.escape(p) for p in parts) + "$"))
    return patterns


def _order(dag: Dag, graph: Any | None) -> None:
    """Order each layer to untangle edges (the barycentre heuristic): stages by graph-file order
    where given, then by the mean position of their inputs; producers by the first layer they
    feed, then by the mean position of what they feed."""
    patterns = _template_rank(graph)
    output = str(getattr(graph, "output", "")) if graph is not None else ""
    inputs: dict[str, list[str]] = defaultdict(list)
    readers: dict[str, list[str]] = defaultdict(list)
    for src, dst in dag.edges:
        inputs[dst].append(src)
        readers[src].append(dst)
    position: dict[str, float] = {}
    layers = dag.layers()

    def rank(node_id: str) -> int:
        return next((i for i, p in enumerate(patterns) if p.match(node_id)), len(patterns))

    def mean_at(ids: list[str]) -> float:
        known = [position[i] for i in ids if i in position]
        return sum(known) / len(known) if known else 0.0

    def place(layer: list[str]) -> None:
        for i, node_id in enumerate(layer):
            position[node_id] = i - (len(layer) - 1) / 2

    def downward() -> None:
        for layer in layers[1:]:
            layer.sort(key=lambda n: (rank(n), mean_at(inputs[n]), n))
            place(layer)

    layers[0].sort()
    place(layers[0])
    downward()
    layers[0].sort(
        key=lambda n: (
            min((dag.nodes[r].layer for r in readers[n]), default=0),
            mean_at(readers[n]),
            n,
        )
    )
    place(layers[0])
    downward()
    for node_id, node in dag.nodes.items():
        node.output = node_id == output
    dag.nodes = {n: dag.nodes[n] for layer in layers for n in layer}
