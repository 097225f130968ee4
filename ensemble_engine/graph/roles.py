"""Fitting a node's inputs to its combiner: the combiner and params, roles, kinds, classes, splits.

A single-role combiner takes a selection directly; a combiner with several roles takes a
mapping of role to selection, and every role must be given. A stored input must hold a kind the
role accepts, cover the store's classes unless the role takes class subsets, and have been
predicted on the samples the store holds for every split (same split fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..combiner import Combiner, Role
from ..errors import GraphError, PluginError
from .expand import Node
from .select import Resolver, SelectionError, StoreIndex
from .source import GraphSpec


@dataclass(frozen=True)
class InputRef:
    """A resolved input: a stored prediction or an earlier node's output (``node``)."""

    name: str
    node: bool
    kind: str
    classes: tuple[str, ...]


def combiner_entry(
    spec: GraphSpec, n: Node, host: Any
) -> tuple[Any, type[Combiner], dict[str, Any]]:
    """The registry entry, class and checked params of a node's combiner."""
    key = n.template.key
    try:
        entry = host.combiners.get(n.combiner)
    except PluginError:
        known = ", ".join(e.name for e in host.combiners) or "none"
        raise spec.error(
            spec.line("nodes", key, "combiner"),
            f"unknown combiner {n.combiner!r} (known: {known})",
            "fix the name or install the plugin that provides it (`ee plugins`)",
            n.id,
        ) from None
    try:
        params = entry.factory.validate_params(n.params)
    except GraphError as exc:
        text = numeric_text(n.params, entry.factory.params_schema)
        if text is not None:
            param, value = text
            raise spec.error(
                spec.line("nodes", key, "params", param),
                f"param {param} of {entry.name}: {value!r} is text, not a number",
                f"write it as a plain number without quotes, e.g. {param}: {float(value)!r}",
                n.id,
            ) from None
        raise spec.error(
            spec.line("nodes", key, "params"),
            f"bad params for {entry.name}: {exc}",
            _params_hint(entry.name, entry.factory),
            n.id,
        ) from None
    return entry, entry.factory, params


def numeric_text(params: dict[str, Any], schema: dict[str, Any]) -> tuple[str, str] | None:
    """``(param, value)`` of the first text value that reads as a number where the param's
    schema takes a number (``"0.01"`` quoted, or a foreach value written as text)."""
    props = schema.get("properties", {})
    for param, value in params.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and _is_number(item) and _takes_number(props.get(param)):
                return param, item
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower().lstrip("+-") not in ("inf", "infinity", "nan")


def _takes_number(schema: Any) -> bool:
    """Whether a JSON Schema (or one of its alternatives or list items) accepts numbers."""
    if not isinstance(schema, dict):
        return False
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "number" in types or "integer" in types:
        return True
    nested = [*schema.get("oneOf", []), *schema.get("anyOf", []), schema.get("items")]
    return any(_takes_number(s) for s in nested)


def _params_hint(name: str, factory: type[Combiner]) -> str:
    """What the combiner takes: each param with its default, or its enum where it has one."""
    props = factory.params_schema.get("properties", {})
    if not props:
        return f"{name} takes no params: remove them"
    parts = []
    for key, schema in props.items():
        choices = schema.get("enum") or [
            v for alt in schema.get("oneOf", []) for v in alt.get("enum", [])
        ]
        shown = f" ({'|'.join(map(str, choices))}, ...)" if choices else ""
        default = f" = {schema['default']!r}" if "default" in schema else ""
        parts.append(f"{key}{shown}{default}")
    return f"{name} takes {', '.join(parts)}"


def role_selections(spec: GraphSpec, n: Node, factory: type[Combiner]) -> list[tuple[Role, Any]]:
    roles = {r.name: r for r in factory.roles}
    line = spec.line("nodes", n.template.key, "inputs")
    given = n.inputs
    if not (isinstance(given, dict) and "where" not in given):
        if len(roles) != 1:
            form = ", ".join(f"{r}: ..." for r in roles)
            raise spec.error(
                line,
                f"combiner {n.combiner} takes the roles {', '.join(roles)}",
                f"give inputs as a mapping {{{form}}}",
                n.id,
            )
        given = {next(iter(roles)): given}
    for name in given:
        if name not in roles:
            raise spec.error(
                spec.line("nodes", n.template.key, "inputs", name),
                f"combiner {n.combiner} has no role {name!r}",
                f"use the roles {', '.join(roles)}",
                n.id,
            )
    for name in roles:
        if name not in given:
            raise spec.error(
                line,
                f"role {name!r} of combiner {n.combiner} has no inputs",
                f"add {name}: [...] to the inputs",
                n.id,
            )
    return [(roles[name], given[name]) for name in roles]


def role_refs(
    spec: GraphSpec,
    n: Node,
    role: Role,
    selection: Any,
    resolver: Resolver,
    entries: dict[str, Any],
) -> list[InputRef]:
    """The inputs ``selection`` gives ``role``, each checked against what the role takes."""
    index = resolver.index
    line = spec.line("nodes", n.template.key, "inputs")
    try:
        names = resolver.resolve(selection, n.id)
    except SelectionError as exc:
        raise spec.error(line, exc.problem, exc.fix, n.id) from None
    if not role.many and len(names) != 1:
        raise spec.error(
            line,
            f"role {role.name!r} of {n.combiner} takes one input, got "
            f"{len(names)} ({', '.join(names[:4])})",
            "narrow the selection",
            n.id,
        )
    refs = []
    for name in names:
        if name in entries:
            ref = InputRef(name, True, entries[name][1].output_kind, tuple(index.classes))
        else:
            ref = stored_ref(spec, n, name, index, line)
        if ref.kind not in role.kinds:
            raise spec.error(
                line,
                f"input {name!r} holds {ref.kind}, which role {role.name!r} "
                f"of {n.combiner} does not take ({', '.join(role.kinds)})",
                "select inputs of an accepted kind",
                n.id,
            )
        if not role.subset_ok and list(ref.classes) != index.classes:
            raise spec.error(
                line,
                f"input {name!r} covers {len(ref.classes)} classes, not the "
                f"store's {len(index.classes)}",
                f"leave it out (e.g. '!{name}') or "
                "give it to a role that takes class subsets (coverage)",
                n.id,
            )
        refs.append(ref)
    return refs


def stored_ref(spec: GraphSpec, n: Node, name: str, index: StoreIndex, line: int) -> InputRef:
    """A stored input, checked to hold the store's samples and one kind and class space."""
    stored = index.usable[name]
    for split, attrs in stored.attrs.items():
        if attrs.get("split_fingerprint") != index.fingerprints[split]:
            raise spec.error(
                line,
                f"input {name!r} was predicted on other samples of split "
                f"{split!r} than the store holds (split fingerprints differ)",
                f"re-predict {name} on the store's {split} split",
                n.id,
            )
        pred = index.by_name[name][split]
        if pred.kind != stored.kind or index.classes_of(pred) != stored.classes:
            raise spec.error(
                line,
                f"input {name!r} differs in kind or classes between splits",
                f"re-produce {name} so every split matches",
                n.id,
            )
    return InputRef(name, False, stored.kind, stored.classes)
