"""The prediction-store format spec (README.md) and its JSON Schemas, shipped with the package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

NAMES = ("store-root", "split", "prediction")


@cache
def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    """The JSON Schema ``<name>.v<version>.schema.json`` (store-root, split or prediction)."""
    text = resources.files(__name__).joinpath(f"{name}.v{version}.schema.json").read_text("utf-8")
    return json.loads(text)
