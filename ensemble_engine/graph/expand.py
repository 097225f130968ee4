"""``foreach``: one node template becomes a node per combination of placeholder values.

``{name}`` in the node id, inputs or params is replaced by the value. A string that is exactly
one placeholder takes the value with its type (``temperature: "{t}"`` stays a number); inside a
longer string the value is written as text. A value list ``auto`` means every distinct value of
the attribute that the placeholder fills in the node's ``where`` selector, among the stored
predictions that selector could pick (its fixed keys applied); combinations that then select
nothing are dropped, since ``auto`` discovers values rather than asserting them.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..store import check_name

if TYPE_CHECKING:
    from .source import GraphSpec, NodeTemplate

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
AUTO = "auto"
#: The most nodes a graph may expand to: far above any real ensemble, low enough that a typo'd
#: sweep (100 × 100 × 100) is refused at once instead of planning for minutes.
MAX_NODES = 10_000

#: ``discover(fixed_where, attr)``: the distinct values of ``attr`` among the stored predictions
#: that match ``fixed_where`` (the selector's keys that hold no placeholder).
Discover = Callable[[dict[str, Any], str], list[Any]]


@dataclass
class Node:
    """A node after expansion: no placeholders left."""

    id: str
    template: NodeTemplate
    combiner: str
    inputs: Any
    params: dict[str, Any]
    binding: dict[str, Any]
    auto: bool = False  # from an ``auto`` foreach: dropped where its ``where`` selects nothing


def placeholders(value: Any) -> set[str]:
    """Placeholder names used anywhere in a string, list or mapping value."""
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value))
    return set()


def substitute(value: Any, binding: dict[str, Any]) -> Any:
    """``value`` with every ``{name}`` of ``binding`` filled in (see the module docstring)."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in binding:
            return binding[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(binding.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: substitute(v, binding) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, binding) for v in value]
    return value


def where_selectors(inputs: Any) -> list[dict[str, Any]]:
    """Every ``where`` mapping of a node's inputs (top level or under a role)."""
    if isinstance(inputs, dict) and "where" in inputs:
        return [inputs["where"]]
    if isinstance(inputs, dict):
        return [w for sel in inputs.values() for w in where_selectors(sel)]
    return []


def check_placeholders(spec: GraphSpec) -> None:
    """Every placeholder used is defined in ``foreach``, and every one defined is used."""
    for t in spec.nodes:
        names = set(t.foreach)
        used: set[str] = set()
        for fld, value in (("id", t.key), ("inputs", t.inputs), ("params", t.params)):
            found = placeholders(value)
            used |= found
            unknown = sorted(found - names)
            if unknown:
                line = spec.line("nodes", t.key) if fld == "id" else spec.line("nodes", t.key, fld)
                raise spec.error(
                    line,
                    f"placeholder {{{unknown[0]}}} in its {fld} is not defined by foreach",
                    f"add foreach: {{{unknown[0]}: [...]}} or remove the braces",
                    t.key,
                )
        for name in sorted(names - used):
            raise spec.error(
                spec.line("nodes", t.key, "foreach", name),
                f"foreach placeholder {name!r} is used nowhere",
                f"write {{{name}}} in the node id, inputs or params, or drop it",
                t.key,
            )
        for name, values in t.foreach.items():
            if spec.overrides.get(name, values) == AUTO:
                auto_attr(spec, t, name)


def auto_attr(spec: GraphSpec, t: NodeTemplate, name: str) -> tuple[str, dict[str, Any]]:
    """The ``where`` attribute whose value is exactly ``{name}``: what ``auto`` enumerates."""
    for where in where_selectors(t.inputs):
        for attr, value in where.items():
            if value == f"{{{name}}}" and attr != "name":
                return attr, where
    raise spec.error(
        spec.line("nodes", t.key, "foreach", name),
        f"foreach {name}: auto needs {{{name}}} as a whole value in the inputs' where",
        f"write inputs: {{where: {{ATTR: '{{{name}}}'}}}} or list the values",
        t.key,
    )


def _check_size(spec: GraphSpec, t: NodeTemplate, values: dict[str, list[Any]], total: int) -> int:
    """``total`` plus the nodes ``t`` expands to; refused, before expanding, above ``MAX_NODES``."""
    count = math.prod(len(v) for v in values.values())
    if total + count <= MAX_NODES:
        return total + count
    sizes = " × ".join(str(len(v)) for v in values.values())
    raise spec.error(
        spec.line("nodes", t.key, "foreach") if values else spec.line("nodes", t.key),
        f"foreach makes {count} nodes ({sizes}), the graph {total + count} in all: more than "
        f"the {MAX_NODES} nodes a graph may expand to",
        "list fewer values per placeholder, or split the sweep into several graph files",
        t.key,
    )


def expand(spec: GraphSpec, discover: Discover) -> list[Node]:
    """All nodes of the graph in file order; ids are checked and unique."""
    nodes: list[Node] = []
    seen: dict[str, str] = {}
    total = 0
    for t in spec.nodes:
        values: dict[str, list[Any]] = {}
        is_auto = False
        for name, given in t.foreach.items():
            given = spec.overrides.get(name, given)
            if given != AUTO:
                values[name] = list(given)
                continue
            is_auto = True
            attr, where = auto_attr(spec, t, name)
            fixed = {k: v for k, v in where.items() if not placeholders(v)}
            values[name] = discover(fixed, attr)
            if not values[name]:
                raise spec.error(
                    spec.line("nodes", t.key, "foreach", name),
                    f"foreach {name}: auto found no usable stored prediction with "
                    f"attribute {attr!r}",
                    "produce predictions first or list the values",
                    t.key,
                )
        total = _check_size(spec, t, values, total)
        for combo in itertools.product(*values.values()):
            binding = dict(zip(values, combo, strict=True))
            node_id = str(substitute(t.key, binding))
            try:
                check_name(node_id, "node id")
            except StoreError as exc:
                raise spec.error(
                    spec.line("nodes", t.key),
                    str(exc).split(":")[0],
                    "node ids become prediction names: use letters, digits and . _ - + = ,",
                    node_id,
                ) from None
            if node_id in seen:
                raise spec.error(
                    spec.line("nodes", t.key),
                    f"two nodes get the id {node_id!r}"
                    + (
                        " from its foreach"
                        if seen[node_id] == t.key
                        else f" (also {seen[node_id]!r})"
                    ),
                    "put every foreach placeholder in the node id, or rename one node",
                    node_id,
                )
            seen[node_id] = t.key
            nodes.append(
                Node(
                    node_id,
                    t,
                    t.combiner,
                    substitute(t.inputs, binding),
                    substitute(t.params, binding),
                    binding,
                    auto=is_auto,
                )
            )
    return nodes
