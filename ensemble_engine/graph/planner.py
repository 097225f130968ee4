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
from dataclasses import dataclass, field
from typing import Any

from ..combiner import Combiner
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

    def node(self, node_id: str) -> PlannedNode:
        return next(n for n in self.nodes if n.id == node_id)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def plan(spec: GraphSpec, store: PredictionStore) -> Plan:
    """Expand, resolve and check the whole graph against ``store``; nothing is written."""
    splits = _check_splits(spec, store)
    index = StoreIndex(store, splits, spec.name)
    nodes = expand(spec, index.discover)
    all_ids = {n.id for n in nodes}
    nodes = [n for n in nodes if not (n.auto and _selects_nothing(n, index, all_ids))]
    ids = [n.id for n in nodes]
    if spec.output not in ids:
        raise spec.error(
            spec.line("output"),
            f"output {spec.output!r} is not a node of the graph",
            f"name one of {', '.join(ids[:6])}",
        )
    _check_name_clashes(spec, nodes, index)
    host = get_host()
    entries = {n.id: combiner_entry(spec, n, host) for n in nodes}
    resolver = Resolver(index, ids)
    planned: dict[str, PlannedNode] = {}
    for n in nodes:
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
    return Plan(spec, store.path, store.classes, spec.fit, splits, order, spec.output, stored)


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
