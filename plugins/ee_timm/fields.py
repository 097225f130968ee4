"""Typed recipe values from YAML values or from ``--set key=value`` strings.

One converter serves both sources: a YAML file already holds numbers and lists, the command
line holds text (``0.35,1`` for a pair, ``none`` for an empty policy, ``true``/``off`` for a
switch). A value that does not fit its field raises ``RecipeError`` naming the field, the form it
takes and an example. Numbers must be finite: ``float("inf")`` and ``float("nan")`` read
``inf``/``nan`` text happily, and an infinite rate or σ would only fail mid-training.
"""

from __future__ import annotations

import math
import types
from typing import Any, Union, get_args, get_origin

import yaml

from ensemble_engine import RecipeError, load_yaml

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}
_PLURALS = {bool: "switches", int: "integers", float: "numbers", str: "texts"}


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the type ``hint`` of recipe field ``name``; ``RecipeError`` if not."""
    try:
        return _convert(hint, value)
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        example = f"--set {name}={_example(hint)}"
        raise RecipeError(
            f"{name} takes {describe(hint)}, not {_shown(value)}; e.g. {example}"
        ) from None


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that the error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _convert(hint: Any, value: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return _convert(inner[0], value)
    if origin is tuple:
        return _convert_tuple(args, value)
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = load_yaml(value) if value.strip() else {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError("not a mapping")
        return dict(value)
    if hint is bool:
        return _convert_bool(value)
    if hint is int:
        if isinstance(value, str):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("not a number")
        if not math.isfinite(value := float(value)):
            raise ValueError("not a finite number")
        return value
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise TypeError("not a text")
        return value.strip()
    raise TypeError(f"unsupported field type {hint!r}")


def _convert_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError("not a switch")


def _convert_tuple(args: tuple[Any, ...], value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        items: list[Any] = [p.strip() for p in text.split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item) for item in items)
    if len(items) != len(args):
        raise ValueError(f"needs {len(args)} values")
    return tuple(_convert(a, item) for a, item in zip(args, items, strict=True))


def describe(hint: Any) -> str:
    """The accepted form of a value of type ``hint``, in words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{describe(inner[0])} or none"
    if origin is tuple:
        many = _PLURALS.get(args[0], describe(args[0]))
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {many}"
        return f"{len(args)} comma-separated {many}"
    if hint is dict or origin is dict:
        return "a mapping such as {key: value}"
    names = {bool: "a switch (true/false)", int: "an integer", float: "a number", str: "a text"}
    return names.get(hint, str(hint))


def _example(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return "none"
    if origin is tuple:
        one = _example(args[0])
        return ",".join([one] * (2 if args[-1] is Ellipsis else len(args)))
    if hint is dict or origin is dict:
        return "'{smoothing: 0.1}'"
    return {bool: "true", int: "3", float: "0.5", str: "name"}.get(hint, "…")
