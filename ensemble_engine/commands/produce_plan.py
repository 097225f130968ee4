"""How ``ee produce RECIPE --plan`` shows a producer's plan: JSON as it is, or aligned text.

The core knows only the shape every producer's ``plan`` shares (``Producer.plan``): ``recipe``
(field → value), ``sources`` (field → where the value came from), ``run_id``, ``predictions``
(ids, ``<name>/<split>``) and optional ``notes`` (lines); any other key is shown as it comes.
"""

from __future__ import annotations

import json
from typing import Any

import click


def plan_text(recipe: str, producer: str, plan: dict[str, Any]) -> str:
    """The plan as lines: notes, the recipe table (field, value, origin), then the other keys."""
    lines = [f"plan of {recipe} (producer {producer}): nothing trained, nothing written"]
    lines += [str(note) for note in plan.get("notes", [])]
    values, sources = plan.get("recipe", {}), plan.get("sources", {})
    if values:
        lines.append("recipe (value, from):")
        shown = {key: _shown(value) for key, value in values.items()}
        wide_key, wide_value = max(map(len, shown)), max(map(len, shown.values()))
        for key, value in shown.items():
            origin = sources.get(key, "")
            lines.append(f"  {key:<{wide_key}}  {value:<{wide_value}}  {origin}".rstrip())
    for key, value in plan.items():
        if key in ("recipe", "sources", "notes"):
            continue
        if isinstance(value, list):
            lines.append(f"{key} ({len(value)}):")
            lines += [f"  {_shown(item)}" for item in value]
        elif isinstance(value, dict):
            lines.append(f"{key}: " + ", ".join(f"{k} {_shown(v)}" for k, v in value.items()))
        else:
            lines.append(f"{key}: {_shown(value)}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """A value as ``--set`` takes it: lists comma-joined, ``none``, ``true``/``false``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (list, dict)) for v in value):
        return ",".join(_shown(v) for v in value) if value else "[]"
    if value is None or isinstance(value, (bool, dict, list)):
        return json.dumps(value) if value is not None else "none"
    return str(value)


def echo_plan(recipe: str, producer: str, plan: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan, indent=2, default=str))
    else:
        click.echo(plan_text(recipe, producer, plan))
