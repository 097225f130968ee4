"""What ``ee import`` records besides the scores: ``--fact KEY=VALUE`` and ``--classes FILE``.

Facts are the attributes a graph's ``where:`` selects on (``loss``, ``test_size``,
``backbone``, ...). Each value is read as one YAML scalar by the project's strict reader, so
``test_size=224`` is the number 224, as ``ee produce`` writes it, and ``loss=taylor_ce`` is text.
A list or mapping is refused: ``where`` compares a fact with one value (a list in a ``where``
means "any of these"), and ``auto`` enumerates single values, so a list-valued fact could never
be selected as such. The facts ``ee produce`` writes keep its types: ``backbone``, ``loss`` and
``run`` are text (``backbone=1`` records "1"), ``test_size`` a whole number >= 1, ``seed`` a
whole number. A ``loss`` that is a registered loss or alias is recorded under its registered
name (``taylor`` -> ``taylor_ce``), as ``ee produce`` records it, so one ``where`` finds both.
Keys the store format or ee itself writes are refused (``RESERVED``).

The cost facts ``gflops`` (a number >= 0), ``params`` (a whole number >= 0), ``images_per_s``
(a number > 0) and ``views`` (a whole number >= 1, default 1) are not kept as facts of their own
but folded into the ``cost`` attr (``import_cost``, schemas/README.md "Cost"); an import given
none of them has no ``cost``: its cost is unknown, never zero.

A class list names a specialist's class space: one store class id per line, optionally ending
with ``__other__`` (every class not listed).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from .combiner import OTHER
from .cost import COST_FACTS
from .errors import StoreError
from .strict_yaml import load_yaml

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Keys a fact may not take, and who writes them (schemas/README.md, "Attributes").
RESERVED = {
    **dict.fromkeys(
        ("kind", "split", "split_fingerprint", "classes", "metrics", "created", "complete"),
        "the store writes it",
    ),
    **dict.fromkeys(("source", "tta", "merge"), "ee import writes it"),
    **dict.fromkeys(
        ("combiner", "inputs", "roles", "graph", "graph_name", "node_hash", "state", "foreach"),
        "combiners write it",
    ),
    **dict.fromkeys(("recipe", "subset"), "producers write it as a mapping"),
    "cost": "ee writes it from --fact gflops=, params=, images_per_s=, views=",
    "view": "it marks one test-time view, which `where` skips",
    "name": "`where` reads name as the prediction's name",
}
_RESERVED_FIX = {
    "classes": "import a class subset with --classes FILE",
    "name": "the name is --id",
    "tta": "import the views as an .npz to record them",
    "merge": "import the views as an .npz and choose --merge",
    "cost": "give --fact gflops=4.1 --fact params=25557032 --fact images_per_s=800",
}
TEXT_FACTS = ("backbone", "loss", "run")  # text, as ee produce writes them
# whole numbers: (minimum, example)
WHOLE_FACTS = {"test_size": (1, 224), "seed": (None, 0), "params": (0, 25557032), "views": (1, 4)}
# numbers folded into ``cost``: (minimum, whether the minimum itself is refused, example)
NUMBER_FACTS = {"gflops": (0.0, False, 4.1), "images_per_s": (0.0, True, 800)}


def parse_facts(items: tuple[str, ...] | list[str]) -> tuple[dict[str, Any], list[str]]:
    """``["loss=taylor", "test_size=224"]`` -> (facts, notes), or ``StoreError`` (one line).

    ``notes`` says what was recorded other than as written (a loss alias).
    """
    facts: dict[str, Any] = {}
    notes: list[str] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise StoreError(f"--fact {item!r} is not KEY=VALUE; write e.g. --fact loss=taylor_ce")
        if not KEY_RE.fullmatch(key):
            raise StoreError(
                f"--fact {item!r}: key {key!r} is not a name; use letters, digits and _, "
                "not starting with a digit (e.g. test_size)"
            )
        if key in RESERVED:
            fix = _RESERVED_FIX.get(key, "record the fact under another key")
            raise StoreError(
                f"--fact {item!r}: {key!r} is reserved by the store format ({RESERVED[key]}); {fix}"
            )
        if key in facts:
            raise StoreError(
                f"--fact {key} is given twice ({facts[key]!r} and {raw!r}); give each fact once"
            )
        facts[key] = _value(key, raw, item)
        if key == "loss":
            canonical = _loss_name(facts[key])
            if canonical != facts[key]:
                notes.append(f"loss {facts[key]!r} recorded as {canonical!r} (its registered name)")
                facts[key] = canonical
    return facts, notes


def _value(key: str, raw: str, item: str) -> Any:
    if not raw:
        raise StoreError(f"--fact {item!r}: no value; write e.g. --fact {key}=VALUE")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError:
        raise StoreError(
            f"--fact {item!r}: the value is not one plain YAML scalar; quote it as text, "
            f"e.g. --fact '{key}=\"{raw[:20]}\"'"
        ) from None
    if isinstance(value, (list, dict)):
        shape = "list" if isinstance(value, list) else "mapping"
        raise StoreError(
            f"--fact {item!r}: the value is a YAML {shape}; a fact is one text or number that "
            "`where` can match (quote it to keep it as text)"
        )
    if value is None:
        raise StoreError(f"--fact {item!r}: the value reads as null; give a value or drop the fact")
    if key in TEXT_FACTS:
        return value if isinstance(value, str) else raw
    if key in WHOLE_FACTS:
        low, example = WHOLE_FACTS[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
        ):
            at_least = f" >= {low}" if low is not None else ""
            raise StoreError(
                f"--fact {item!r}: {key} is a whole number{at_least}, as `ee produce` records "
                f"it; write e.g. --fact {key}={example}"
            )
        return value
    if key in NUMBER_FACTS:
        return _number(key, value, item)
    if isinstance(value, float) and not math.isfinite(value):
        raise StoreError(f"--fact {item!r}: {value} is not a finite number; give a finite number")
    if isinstance(value, (str, int, float, bool)):
        return value
    return raw  # a YAML date or timestamp: kept as written


def _number(key: str, value: Any, item: str) -> float:
    low, strict, example = NUMBER_FACTS[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise StoreError(
            f"--fact {item!r}: {key} is a finite number {bound}, as `ee produce` records it; "
            f"write e.g. --fact {key}={example}"
        )
    return float(value)


def import_cost(facts: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``facts`` without the cost facts, and the ``cost`` attr they make for prediction ``name``
    (None where none is given: the import's cost is unknown)."""
    rest = {k: v for k, v in facts.items() if k not in COST_FACTS}
    if len(rest) == len(facts):
        return rest, None
    cost = {
        "gflops": facts.get("gflops"),
        "params": facts.get("params"),
        "views": facts.get("views", 1),
        "images_per_s": facts.get("images_per_s"),
        "device": None,
        "members": [name],
    }
    return rest, cost


def _loss_name(name: str) -> str:
    """The registered name of a loss or alias; an unknown loss (imported models may use any)
    is recorded as given."""
    from .plugins import get_host

    losses = get_host().losses
    return losses.resolve(name) if name in losses else name


def read_class_list(path: Path, store_classes: list[str]) -> list[str]:
    """The class ids listed in ``path`` (see the module docstring), checked against the store."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StoreError(f"{path.name} is not UTF-8 text; save the class list as UTF-8") from None
    known = set(store_classes)
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        cid = line.strip()
        if not cid:
            continue
        if cid in seen:
            raise StoreError(
                f"{path.name} line {number}: class {cid!r} is listed twice (first on line "
                f"{seen[cid]}); list each class once"
            )
        if OTHER in seen:
            raise StoreError(
                f"{path.name} line {seen[OTHER]}: {OTHER} must be the last class (it stands for "
                "every class not listed); move it to the end"
            )
        if cid != OTHER and cid not in known:
            shown = ", ".join(store_classes[:8]) + (", ..." if len(store_classes) > 8 else "")
            raise StoreError(
                f"{path.name} line {number}: {cid!r} is not a class of the store ({shown}); "
                f"list the store's class ids (`ee ls STORE --json` shows them)"
            )
        seen[cid] = number
    if not seen:
        raise StoreError(
            f"{path.name} lists no class; write one store class id per line, optionally "
            f"ending with {OTHER}"
        )
    if list(seen) == [OTHER]:
        raise StoreError(
            f"{path.name} lists only {OTHER}; list the classes the specialist tells apart above it"
        )
    return list(seen)
