"""Reading a graph file: YAML with line numbers, the JSON Schema check, shipped graphs.

Every problem in a graph file is reported as one line, ``FILE:LINE: node 'id': problem; fix``,
so the YAML is composed once to remember where each key and list item starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import GraphError
from ..schemas import load_schema
from ..strict_yaml import load_yaml, load_yaml_nodes
from .expand import check_placeholders

VERSION = 1
Path_ = tuple[str, ...]


@dataclass
class NodeTemplate:
    """A node as written: ``key`` may hold ``{placeholders}`` that ``foreach`` fills in."""

    key: str
    combiner: str
    inputs: Any
    params: dict[str, Any]
    foreach: dict[str, Any]
    description: str = ""


@dataclass
class GraphSpec:
    """A parsed, checked graph file; ``plan`` expands ``foreach`` (``auto`` needs a store)."""

    source: str  # how messages name the file
    name: str  # the file's stem; node outputs record it as ``graph_name``
    hash: str  # of the file's text, recorded as ``graph``
    fit: str
    apply: list[str]
    nodes: list[NodeTemplate]
    output: str
    store: str | None = None
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # placeholder → values or "auto"
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)

    def line(self, *path: str | int) -> int:
        """The line of the deepest key of ``path`` that the file holds (1 for the top)."""
        keys = tuple(str(p) for p in path)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys, 1)

    def error(self, line: int, problem: str, fix: str, node: str | None = None) -> GraphError:
        """A one-line ``GraphError``: ``FILE:LINE: node 'id': problem; fix``."""
        where = f"node '{node}': " if node is not None else ""
        text = f"{self.source}:{line}: {where}{problem}; {fix}"
        return GraphError(" ".join(text.split()))


def shipped_graphs() -> dict[str, Traversable]:
    """The graph files shipped inside the package, by name (file stem)."""
    folder = resources.files("ensemble_engine").joinpath("graphs")
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def load_graph(source: str | Path, overrides: dict[str, Any] | None = None) -> GraphSpec:
    """Read a graph file (a path, or the name of a shipped graph) and check its shape.

    ``overrides`` replaces the values of ``foreach`` placeholders in every node that has them
    (``ee combine GRAPH --set loss=ce,focal``). Store-dependent checks happen in ``plan``.
    """
    path = Path(source)
    shipped = shipped_graphs()
    short = str(source).removesuffix(".yaml")
    if path.is_file():
        text, display, name = path.read_text("utf-8"), str(source), path.stem
        folder: Path | None = path.parent
    elif short in shipped:
        text, display, name = shipped[short].read_text("utf-8"), f"{short}.yaml", short
        folder = None
    else:
        known = ", ".join(sorted(shipped)) or "none"
        raise GraphError(
            f"no graph file {str(source)!r} and no shipped graph of that name (shipped: {known}); "
            "give the path of a graph.yaml or a name from `ee graphs`"
        )
    data, lines = _parse_yaml(text, display)
    spec = _build(data, lines, display, name, text)
    if spec.store and folder is not None and "://" not in spec.store:
        spec.store = str(folder / spec.store) if not Path(spec.store).is_absolute() else spec.store
    spec.overrides = _check_overrides(spec, overrides or {})
    check_placeholders(spec)
    return spec


def _parse_yaml(text: str, display: str) -> tuple[Any, dict[Path_, int]]:
    try:
        data, root = load_yaml_nodes(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fix = getattr(exc, "fix", "fix the syntax")
        problem = "invalid YAML: " + problem if fix == "fix the syntax" else problem
        raise GraphError(f"{display}:{line}: {problem}; {fix}") from None
    lines: dict[Path_, int] = {}
    if root is not None:
        _walk(root, (), lines, display)
    return data, lines


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], display: str) -> None:
    """Record the line of every mapping key and sequence item (the loader refused duplicate
    keys and resolved merge keys: a merged key's line is where its anchor wrote it)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.tag != "tag:yaml.org,2002:str":  # graph files are JSON-shaped: text keys only
                raise GraphError(
                    f"{display}:{key.start_mark.line + 1}: key {key.value!r} is read as "
                    f"{key.tag.rsplit(':', 1)[-1]}, not text; quote it ('{key.value}':)"
                )
            k = str(key.value)
            lines[(*path, k)] = key.start_mark.line + 1
            _walk(value, (*path, k), lines, display)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, str(i)), lines, display)


def _build(data: Any, lines: dict[Path_, int], display: str, name: str, text: str) -> GraphSpec:
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    spec = GraphSpec(display, name, digest, "", [], [], "", lines=lines)
    if not isinstance(data, dict):
        raise spec.error(
            1,
            "the file is not a mapping of keys",
            "write the keys version, fit, apply, nodes and output (see `ee graphs`)",
        )
    version = data.get("version")
    if version != VERSION:
        raise spec.error(
            spec.line("version"),
            f"graph file version {version!r} is not supported (this ee reads version {VERSION})",
            f"write version: {VERSION}",
        )
    _check_schema(spec, data)
    apply = data["apply"]
    spec.fit, spec.output = data["fit"], data["output"]
    spec.apply = [apply] if isinstance(apply, str) else list(apply)
    spec.store, spec.description = data.get("store"), data.get("description", "")
    for key, node in data["nodes"].items():
        spec.nodes.append(
            NodeTemplate(
                str(key),
                node["combiner"],
                node["inputs"],
                dict(node.get("params") or {}),
                dict(node.get("foreach") or {}),
                node.get("description", ""),
            )
        )
    return spec


def _check_schema(spec: GraphSpec, data: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(load_schema("graph"))
    errors = list(validator.iter_errors(data))
    # a misspelt key also leaves a required key missing: name the misspelling, it is the cause
    unknown = [e for e in errors if e.validator == "additionalProperties"]
    error = unknown[0] if unknown else jsonschema.exceptions.best_match(errors)
    if error is None:
        return
    path = [str(p) for p in error.absolute_path]
    node = path[1] if len(path) >= 2 and path[0] == "nodes" else None
    field_path = path[2:] if node is not None else path
    where = ".".join(field_path) or ("the node" if node is not None else "the file")
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        raise spec.error(
            spec.line(*path, extra[0]),
            f"unknown key {extra[0]!r} in {where}",
            f"use only {', '.join(known)}",
            node,
        )
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        raise spec.error(
            spec.line(*path),
            f"{where} lacks the key {missing[0]!r}",
            f"add {missing[0]}: to {'the node' if node is not None else 'the file'}",
            node,
        )
    expected = _description_above(error)
    problem = f"{where}: {error.message}"
    if len(problem) > 160:
        problem = f"{where}: {str(error.instance)[:60]!r} is not accepted"
    raise spec.error(spec.line(*path), problem, f"expected {expected}", node)


def _description_above(error: jsonschema.ValidationError) -> str:
    """The nearest schema description at or above a failing sub-schema: the form to use."""
    current: jsonschema.ValidationError | None = error
    while current is not None:
        if isinstance(current.schema, dict) and current.schema.get("description"):
            return str(current.schema["description"])
        current = current.parent
    return str(load_schema("graph")["description"])


def _check_overrides(spec: GraphSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    known = {p for t in spec.nodes for p in t.foreach}
    for key, values in overrides.items():
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise GraphError(
                f"{spec.source}: --set {key}: no node has a foreach placeholder "
                f"{key!r} (placeholders: {names}); set one of those"
            )
        if not values:
            raise GraphError(f"{spec.source}: --set {key}: no values; give KEY=V1,V2 or KEY=auto")
    return {k: v if v == "auto" else list(v) for k, v in overrides.items()}


def parse_set_option(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``["loss=ce,focal", "size=auto"]`` → ``{"loss": ["ce", "focal"], "size": "auto"}``.

    Values are read as YAML scalars, so ``size=224`` gives the number 224 (and ``t=1e-2``
    the number 0.01: ``strict_yaml`` reads exponent floats as numbers).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GraphError(f"--set {item!r} is not KEY=VALUES; write e.g. --set loss=ce,focal")
        try:
            values = [load_yaml(v.strip()) for v in raw.split(",") if v.strip()]
        except yaml.YAMLError:
            raise GraphError(
                f"--set {item!r}: a value is not plain YAML; give text or numbers, "
                "e.g. loss=ce,focal"
            ) from None
        out[key.strip()] = "auto" if values == ["auto"] else values
    return out
