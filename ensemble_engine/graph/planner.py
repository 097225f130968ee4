"""Planning: every check against the store and the plugins, an order, content hashes, the cache.

``plan`` does all validation before any work, so a broken graph writes nothing. A node's
content hash covers its combiner (name, plugin, plugin version), its checked params, the fit
split and its inputs' content: a stored input contributes a hash of its name and its attrs on
every split (``created`` and ``metrics`` change whenever it is rewritten), a node input its
node's hash. A node whose outputs carry its hash on every split is cached; changing a node thus
recomputes it and its dependents only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..combiner import Combiner
from ..errors import GraphError
from ..plugins import get_host
from ..store import PredictionStore
from .expand import Node, expand, where_selectors
from .roles import InputRef, combiner_entry, role_refs, role_selections
from .select import Resolver, StoreIndex
from .source import GraphSpec


@dataclass
class PlannedNode:
    id: str
    combiner: str  # canonical registry name
    plugin: str
    plugin_version: str
    factory: type[Combiner]
    params: dict[str, Any]
    roles: dict[str, list[InputRef]]
    binding: dict[str, Any]
    line: int
    node_hash: str = ""
    cached: bool = False

    @property
    def inputs(self) -> list[str]:
        """Every input name once, in role order."""
        return list(dict.fromkeys(r.name for refs in self.roles.values() for r in refs))


@dataclass
class Plan:
    spec: GraphSpec
    store_path: str
    classes: list[str]
    fit: str
    splits: list[str]  # the fit split first, then the other apply splits: what each node writes
    nodes: list[PlannedNode]  # topological order
    output: str
    # attrs of every complete stored prediction on the plan's splits, as read while planning
    stored_attrs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)
    left_out: list[str] = field(default_factory=list)  # nodes not planned (``--output``)

    def node(self, node_id: str) -> PlannedNode:
        return next(n for n in self.nodes if n.id == node_id)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def plan(spec: GraphSpec, store: PredictionStore, output: str | None = None) -> Plan:
    """Expand, resolve and check the whole graph against ``store``; nothing is written.

    ``output`` (``ee combine --output NODE``) plans that node and its ancestors only: the other
    nodes are neither checked nor run, and are listed in ``Plan.left_out``. Without it every node
    of the graph is planned (nodes the graph's output does not read included).
    """
    splits = _check_splits(spec, store)
    index = StoreIndex(store, splits, spec.name)
    nodes = expand(spec, index.discover)
    all_ids = {n.id for n in nodes}
    nodes = [n for n in nodes if not (n.auto and _selects_nothing(n, index, all_ids))]
    ids = [n.id for n in nodes]
    if output is not None and output not in ids:
        raise GraphError(
            f"{spec.source}: --output {output!r} is not a node of the graph; "
            f"name one of {', '.join(ids[:6])}{', …' if len(ids) > 6 else ''}"
        )
    if spec.output not in ids:
        raise spec.error(
            spec.line("output"),
            f"output {spec.output!r} is not a node of the graph",
            f"name one of {', '.join(ids[:6])}",
        )
    host = get_host()
    by_id = {n.id: n for n in nodes}
    entries = _Entries(spec, by_id, host)
    resolver = Resolver(index, ids)
    planned: dict[str, PlannedNode] = {}
    # Without --output every node is planned; with it, the output and what it reads, found by
    # following resolved node inputs (so nodes left out are never resolved or checked).
    todo = [output] if output is not None else list(reversed(ids))
    while todo:
        node_id = todo.pop()
        if node_id in planned:
            continue
        n = by_id[node_id]
        entry, factory, params = entries[n.id]
        roles = {
            role.name: role_refs(spec, n, role, sel, resolver, entries)
            for role, sel in role_selections(spec, n, factory)
        }
        info = host.infos.get(entry.plugin)
        planned[n.id] = PlannedNode(
            n.id,
            entry.name,
            entry.plugin,
            info.version if info else "?",
            factory,
            params,
            roles,
            n.binding,
            spec.line("nodes", n.template.key),
        )
        todo.extend(r.name for refs in roles.values() for r in refs if r.node)
    left_out = [i for i in ids if i not in planned]
    nodes = [n for n in nodes if n.id in planned]
    _check_name_clashes(spec, nodes, index)
    order = _topological(spec, nodes, planned)
    fit_fp = index.fingerprints[spec.fit]
    for pn in order:
        content = {
            role: [_content_id(r, planned, index) for r in refs] for role, refs in pn.roles.items()
        }
        pn.node_hash = digest(
            {
                "combiner": pn.combiner,
                "plugin": pn.plugin,
                "plugin_version": pn.plugin_version,
                "params": pn.params,
                "fit": [spec.fit, fit_fp],
                "inputs": content,
            }
        )
        done = index.by_name.get(pn.id, {})
        pn.cached = all(
            s in done and done[s].attrs.get("node_hash") == pn.node_hash for s in splits
        )
    stored = {
        (name, split): pred.attrs
        for name, per_split in index.by_name.items()
        for split, pred in per_split.items()
    }
    target = output if output is not None else spec.output
    return Plan(spec, store.path, store.classes, spec.fit, splits, order, target, stored, left_out)


class _Entries(Mapping[str, Any]):
    """Each node's combiner entry and checked params, looked up when a node is first needed.

    ``role_refs`` asks it whether an input name is a node (``in``) and what that node's combiner
    writes; checking params lazily keeps nodes left out by ``--output`` unchecked.
    """

    def __init__(self, spec: GraphSpec, nodes: dict[str, Node], host: Any) -> None:
        self._spec, self._nodes, self._host = spec, nodes, host
        self._done: dict[str, Any] = {}

    def __getitem__(self, node_id: str) -> Any:
        if node_id not in self._done:
            self._done[node_id] = combiner_entry(self._spec, self._nodes[node_id], self._host)
        return self._done[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def _check_splits(spec: GraphSpec, store: PredictionStore) -> list[str]:
    if not store.classes:
        raise spec.error(1, f"store {store.path} has no classes yet", "run `ee store init` first")
    known = store.split_names()
    for key, names in (("fit", [spec.fit]), ("apply", spec.apply)):
        for name in names:
            if name not in known:
                raise spec.error(
                    spec.line(key),
                    f"{key} split {name!r} is not in store "
                    f"{store.path} (splits: {', '.join(known) or 'none'})",
                    "register it with `ee store init` or name another split",
                )
    if not store.split(spec.fit).labelled:
        raise spec.error(
            spec.line("fit"),
            f"fit split {spec.fit!r} has no labels",
            "fit on a labelled split (e.g. val)",
        )
    return list(dict.fromkeys([spec.fit, *spec.apply]))


def _selects_nothing(node: Node, index: StoreIndex, ids: set[str]) -> bool:
    return any(not index.select_where(w, ids) for w in where_selectors(node.inputs))


def _check_name_clashes(spec: GraphSpec, nodes: list[Node], index: StoreIndex) -> None:
    for n in nodes:
        for pred in index.by_name.get(n.id, {}).values():
            origin = (pred.attrs.get("source") or {}).get("type", "unknown")
            if origin != "combiner":
                raise spec.error(
                    spec.line("nodes", n.template.key),
                    f"its id is ambiguous: "
                    f"stored prediction {pred.id} (from a {origin}) has that name "
                    "and would be overwritten",
                    "rename the node",
                    n.id,
                )


def _topological(
    spec: GraphSpec, nodes: list[Node], planned: dict[str, PlannedNode]
) -> list[PlannedNode]:
    """Inputs before the nodes that read them, otherwise file order; a cycle is an error."""
    order: list[PlannedNode] = []
    state: dict[str, int] = {}
    keys = {n.id: n.template.key for n in nodes}

    def visit(node_id: str, stack: list[str]) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            cycle = [*stack[stack.index(node_id) :], node_id]
            raise spec.error(
                spec.line("nodes", keys[node_id], "inputs"),
                f"its inputs form a cycle: {' -> '.join(cycle)}",
                "remove one of those inputs",
                node_id,
            )
        state[node_id] = 1
        stack.append(node_id)
        for ref in (r for refs in planned[node_id].roles.values() for r in refs):
            if ref.node:
                visit(ref.name, stack)
        stack.pop()
        state[node_id] = 2
        order.append(planned[node_id])

    for n in nodes:
        visit(n.id, [])
    return order


def _content_id(ref: InputRef, planned: dict[str, PlannedNode], index: StoreIndex) -> str:
    if ref.node:
        return planned[ref.name].node_hash
    return digest([ref.name, index.usable[ref.name].attrs])
