"""Selecting a node's inputs among this graph's nodes and the stored predictions.

A selection is a name, a list of names and fnmatch globs, or ``{where: {attr: value}}``:

- A plain name is a node id of this graph if there is one, else a stored prediction name.
  A node's output is written under its id, so a stored prediction named like a node is that
  node's earlier output; a stored prediction of another origin (a producer, an import) named
  like a node is refused by ``plan`` rather than overwritten.
- A glob matches node ids (never the node itself) and stored prediction names; a list entry
  starting with ``!`` removes what its glob matches from the entries before it.
- ``where`` matches stored predictions only, by metadata equality (values compared as text
  too, so ``test_size: "224"`` matches 224; a list value accepts any of its items). ``name``
  inside ``where`` takes globs, ``!`` excluding. Single-view predictions kept by
  ``--keep-views`` (attr ``view``) share their merged prediction's facts, so ``where`` skips
  them unless it names ``view`` itself.

Globs and ``where`` skip stored outputs of earlier runs of the same graph (``graph_name``): a
renamed or removed node's old output must not slip back in as an input. A stored prediction is
usable only when it is complete on the fit split and on every apply split.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ..store import Prediction, PredictionStore

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Stored:
    """One usable stored prediction: its kind and classes, and its attrs on each split."""

    name: str
    kind: str
    classes: tuple[str, ...]
    attrs: dict[str, dict[str, Any]] = field(hash=False, compare=False)

    @property
    def facts(self) -> dict[str, Any]:
        """Metadata for ``where`` (the same on every split; read from the first)."""
        return next(iter(self.attrs.values()))


class StoreIndex:
    """The complete stored predictions by name, as a graph over ``splits`` sees them."""

    def __init__(self, store: PredictionStore, splits: list[str], graph_name: str) -> None:
        self.splits = splits
        self.classes = store.classes
        self.fingerprints = {s: store.split(s).fingerprint for s in splits}
        self.by_name: dict[str, dict[str, Prediction]] = {}
        for pred in store.list():
            pred.check_attrs()  # a hand-edited source or metrics is named before any write
            self.by_name.setdefault(pred.name, {})[pred.split] = pred
        self.usable: dict[str, Stored] = {}
        self.partial: dict[str, list[str]] = {}
        for name, per_split in self.by_name.items():
            missing = [s for s in splits if s not in per_split]
            if missing:
                self.partial[name] = missing
                continue
            first = per_split[splits[0]]
            attrs = {s: per_split[s].attrs for s in splits}
            self.usable[name] = Stored(name, first.kind, self.classes_of(first), attrs)
        self.own = {
            name
            for name, per_split in self.by_name.items()
            if any(_written_by(p, graph_name) for p in per_split.values())
        }

    def classes_of(self, pred: Prediction) -> tuple[str, ...]:
        return tuple(str(c) for c in pred.attrs.get("classes", self.classes))

    def candidates(self, exclude: set[str]) -> list[Stored]:
        """Stored predictions a glob or ``where`` may pick (sorted by name)."""
        return [s for n, s in sorted(self.usable.items()) if n not in exclude and n not in self.own]

    def select_where(self, where: dict[str, Any], exclude: set[str]) -> list[str]:
        return [s.name for s in self.candidates(exclude) if where_matches(s.name, s.facts, where)]

    def discover(self, fixed: dict[str, Any], attr: str) -> list[Any]:
        """Distinct values of ``attr`` among the predictions ``fixed`` selects (for ``auto``)."""
        values = {
            s.facts[attr]
            for s in self.candidates(set())
            if attr in s.facts and where_matches(s.name, s.facts, fixed)
        }
        return sorted(values, key=lambda v: (type(v).__name__, v))


def _written_by(pred: Prediction, graph_name: str) -> bool:
    return pred.source.get("type") == "combiner" and pred.attrs.get("graph_name") == graph_name


def name_matches(name: str, patterns: Any) -> bool:
    """``patterns``: a glob or a list of globs; ``!glob`` excludes; only exclusions mean '*'."""
    items = [str(p) for p in (patterns if isinstance(patterns, list) else [patterns])]
    include = [p for p in items if not p.startswith("!")] or ["*"]
    exclude = [p[1:] for p in items if p.startswith("!")]
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
        fnmatch.fnmatchcase(name, p) for p in exclude
    )


def where_matches(name: str, facts: dict[str, Any], where: dict[str, Any]) -> bool:
    if "view" in facts and "view" not in where:
        return False
    for key, want in where.items():
        if key == "name":
            if not name_matches(name, want):
                return False
            continue
        have = facts.get(key)
        wants = want if isinstance(want, list) else [want]
        if not any(have == w or (have is not None and str(have) == str(w)) for w in wants):
            return False
    return True


class SelectionError(Exception):
    """A selection that cannot be resolved: ``problem`` and ``fix`` for ``GraphSpec.error``."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


class Resolver:
    """Turns a selection into input names (node ids first, then stored names)."""

    def __init__(self, index: StoreIndex, node_ids: list[str]) -> None:
        self.index = index
        self.node_ids = list(node_ids)
        self.node_set = set(node_ids)

    def resolve(self, selection: Any, self_id: str) -> list[str]:
        if isinstance(selection, dict):
            found = self.index.select_where(selection["where"], self.node_set)
            if not found:
                raise SelectionError(
                    f"where {_flow(selection['where'])} selects no stored "
                    f"prediction usable on {', '.join(self.index.splits)}",
                    "compare the values with `ee ls STORE`",
                )
            return found
        items = [selection] if isinstance(selection, str) else list(selection)
        names: list[str] = []
        for item in items:
            if item.startswith("!"):
                names = [n for n in names if not fnmatch.fnmatchcase(n, item[1:])]
            elif GLOB_CHARS & set(item):
                names += [n for n in self._glob(item, self_id) if n not in names]
            elif item not in names:
                names.append(self._plain(item))
        return names

    def _glob(self, pattern: str, self_id: str) -> list[str]:
        nodes = [n for n in self.node_ids if n != self_id and fnmatch.fnmatchcase(n, pattern)]
        stored = [
            s.name
            for s in self.index.candidates(self.node_set)
            if fnmatch.fnmatchcase(s.name, pattern)
        ]
        if nodes or stored:
            return sorted(nodes + stored)
        partial = sorted(n for n in self.index.partial if fnmatch.fnmatchcase(n, pattern))
        note = f" ({', '.join(partial[:3])} lack some of those splits)" if partial else ""
        raise SelectionError(
            f"input pattern {pattern!r} matches no node and no stored prediction "
            f"usable on {', '.join(self.index.splits)}{note}",
            "fix the pattern (see `ee ls STORE`)",
        )

    def _plain(self, name: str) -> str:
        if name in self.node_set or name in self.index.usable:
            return name
        if name in self.index.partial:
            missing = ", ".join(self.index.partial[name])
            raise SelectionError(
                f"input {name!r} is not stored for split {missing}",
                f"produce {name} on {missing} or drop it from the inputs",
            )
        close = difflib.get_close_matches(name, self.node_ids + sorted(self.index.usable), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see `ee ls STORE` for stored names"
        raise SelectionError(
            f"input {name!r} is neither a node of this graph nor a stored prediction", hint
        )


def _flow(where: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in where.items()) + "}"
