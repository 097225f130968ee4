"""Strict YAML for the files users write: graph files, recipe files, and plugins' own files.

``load_yaml`` is ``yaml.safe_load`` (nothing in the text is executed) with three differences:

- A key written twice in one mapping is refused: last-wins would silently drop a value
  (``epochs: 1`` … ``epochs: 500`` trains 500 epochs). Keys merged in with YAML's merge key
  (``<<: *base``) may be overridden by the mapping's own keys, as the merge key intends.
- A document whose aliases expand to more than ``MAX_NODES`` nodes ("billion laughs": aliases
  of aliases) is refused before a value is built, and so is an alias that contains itself.
- Numbers in exponent form without a dot (``1e-2``, ``5E3``) and with an unsigned exponent
  (``1.0e3``) are numbers, as in YAML 1.2 and JSON; YAML 1.1, which PyYAML follows, reads them
  as text.

Every refusal is a ``StrictYAMLError``: a ``yaml.MarkedYAMLError`` (``problem``,
``problem_mark``) with a ``fix`` in words, so callers that already report YAML errors with a
line number report these too, and can add the fix.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_NODES = 100_000  # values (mappings, lists, scalars) a document may expand to
MERGE_TAG = "tag:yaml.org,2002:merge"
FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2's exponent floats that YAML 1.1's resolver leaves as text: 1e-2, 5E3, 1.0e3.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class StrictYAMLError(yaml.MarkedYAMLError):
    """A document ``load_yaml`` refuses: ``problem`` at ``problem_mark``, and the ``fix``."""

    def __init__(self, problem: str, mark: yaml.Mark | None, fix: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads ``1e-2`` as a number."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # mappings whose own keys were checked already

    def flatten_mapping(self, node: MappingNode) -> None:
        # Before merging: a merged mapping's keys precede the node's own, and may repeat them.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            _refuse_duplicate_keys(self, node)
        super().flatten_mapping(node)
        # keep each key's last pair only: the value that wins, wherever this node is merged
        last: dict[Any, int] = {}
        for index, (key_node, _) in enumerate(node.value):
            last[_key_of(self, key_node, index)] = index
        kept = set(last.values())
        node.value = [pair for index, pair in enumerate(node.value) if index in kept]


StrictLoader.add_implicit_resolver(FLOAT_TAG, EXPONENT_FLOAT, list("-+.0123456789"))


def _key_of(loader: StrictLoader, key_node: Node, index: int) -> Any:
    """The key ``key_node`` constructs to; an unhashable one (refused later) by its place."""
    try:
        key = loader.construct_object(key_node, deep=True)
        hash(key)
        return key
    except (TypeError, yaml.YAMLError):
        return ("unhashable", index)


def _refuse_duplicate_keys(loader: StrictLoader, node: MappingNode) -> None:
    first: dict[Any, yaml.Mark] = {}
    for index, (key_node, _) in enumerate(node.value):
        if key_node.tag == MERGE_TAG:
            continue
        key = _key_of(loader, key_node, index)
        if key in first:
            raise StrictYAMLError(
                f"duplicate key {key!r} (first at line {first[key].line + 1})",
                key_node.start_mark,
                "write each key once (only keys merged in with <<: may be overridden)",
            )
        first[key] = key_node.start_mark


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: Node, limit: int = MAX_NODES) -> int:
    """The number of values ``root`` expands to, every alias counted as a copy of its anchor.

    Counted on the composed nodes (each anchor once), so a document of a few lines that
    would expand to billions of values is refused at once, as is an alias inside its anchor.
    """
    size: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > limit:
                raise StrictYAMLError(
                    f"the document's aliases expand to more than {limit} values",
                    node.start_mark,
                    "write the values out, or use fewer aliases of aliases",
                )
            continue
        if key in size:
            continue
        if key in entered:
            raise StrictYAMLError(
                "an alias refers to the value that contains it (a value that never ends)",
                node.start_mark,
                "point the alias at another anchor",
            )
        entered.add(key)
        stack.append((node, True))
        stack += [(c, False) for c in _children(node) if id(c) not in size]
    return size[id(root)]


def load_yaml_nodes(text: str, *, limit: int = MAX_NODES) -> tuple[Any, Node | None]:
    """``(value, composed root node)`` of a one-document YAML text; ``(None, None)`` if empty.

    The nodes carry every key's and item's line (``start_mark``); merge keys are already
    resolved in them (merged pairs first, the mapping's own after).
    """
    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        check_expansion(root, limit)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


def load_yaml(text: str, *, limit: int = MAX_NODES) -> Any:
    """The value of a one-document YAML text, read strictly (see the module docstring)."""
    return load_yaml_nodes(text, limit=limit)[0]
