"""What the prediction store holds, as values: names, split fingerprints, splits, predictions.

Nothing here touches zarr; ``store.py`` and ``store_root.py`` read and write these records, and
``validate.py`` checks a store against the same names and constants.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError

FORMAT = "ee.predictions"
VERSION = 1
KINDS = ("logits", "probs", "labels")
#: A name, matched whole with ``fullmatch``: ``$`` in ``re.match`` also matches before a final
#: newline, which let ``"m9\n"`` through.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]{0,199}")


def valid_name(value: object) -> bool:
    """Whether ``value`` may name a prediction or a split (see ``check_name``)."""
    return isinstance(value, str) and bool(NAME_RE.fullmatch(value)) and ".." not in value


def check_name(value: str, what: str) -> str:
    """Prediction names and split names are single path segments: no '/', no '..', not empty."""
    if not valid_name(value):
        raise StoreError(
            f"invalid {what} {value!r}: use letters, digits and . _ - + = , "
            "(starting with a letter or digit, no '/' or '..')"
        )
    return value


def split_fingerprint(sample_ids: Sequence[str]) -> str:
    """sha256 of the ordered sample ids joined by newlines (first 16 hex digits)."""
    h = hashlib.sha256("\n".join(sample_ids).encode("utf-8"))
    return "sha256:" + h.hexdigest()[:16]


def parse_id(pred_id: str) -> tuple[str, str]:
    """``name/split`` → (name, split)."""
    parts = pred_id.split("/")
    if len(parts) != 2:
        raise StoreError(
            f"invalid prediction id {pred_id!r}: the form is NAME/SPLIT, e.g. final/test"
        )
    return check_name(parts[0], "prediction name"), check_name(parts[1], "split name")


@dataclass(frozen=True)
class SplitHeader:
    """A split without its sample ids: what a writer needs (size, labels, fingerprint).

    Reading the ids of 50 000 samples costs as much as writing a [50 000, 1000] prediction's
    bytes, and a writer only stamps the fingerprint; ``PredictionStore.split`` gives the ids.
    """

    name: str
    labels: np.ndarray
    fingerprint: str

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())


@dataclass(frozen=True)
class Split:
    name: str
    sample_ids: np.ndarray
    labels: np.ndarray
    fingerprint: str

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())


@dataclass(frozen=True)
class Prediction:
    name: str
    split: str
    kind: str
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.name}/{self.split}"

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    @property
    def source(self) -> dict[str, Any]:
        """attrs ``source`` (``{}`` when absent); a hand-edited non-object is named damage."""
        value = self.attrs.get("source")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.damaged("source", value, 'an object such as {"type": "import"}')
        return value

    @property
    def metrics(self) -> dict[str, float]:
        """attrs ``metrics`` (``{}`` when absent); top1, top5, nll and n must be numbers."""
        value = self.attrs.get("metrics")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.damaged("metrics", value, 'an object such as {"top1": 0.5}')
        for key in METRIC_KEYS:
            number = value.get(key)
            if number is not None and (isinstance(number, bool) or not _is_number(number)):
                raise self.damaged(f"metrics.{key}", number, "a number")
        return dict(value)

    def check_attrs(self) -> None:
        """The one-line error for a hand-edited ``source`` or ``metrics`` of the wrong type."""
        _ = (self.source, self.metrics)

    def metric(self, key: str) -> float | None:
        """One of ``metrics`` as a float, or None when the prediction has none."""
        value = self.metrics.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not _is_number(value):
            raise self.damaged(f"metrics.{key}", value, "a number")
        return float(value)

    def damaged(self, field_name: str, value: Any, want: str) -> StoreError:
        """The one-line error for an attr of the wrong type (a hand edit): where and the fix."""
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return StoreError(
            f"prediction {self.id} is damaged: attrs {field_name} is {shown}, not {want}; fix "
            f"it in predictions/{self.name}/{self.split}/zarr.json or re-create the prediction "
            "(`ee validate STORE` lists every problem)"
        )

    def matches(self, where: dict[str, Any]) -> bool:
        for key, want in where.items():
            have = self.attrs.get(key)
            if have != want and str(have) != str(want):
                return False
        return True


METRIC_KEYS = ("top1", "top5", "nll", "n")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


def label_map(store_classes: Sequence[str], pred_classes: Sequence[str]) -> np.ndarray:
    """Store class index → index in the prediction's class space (``__other__`` or -1 if absent).

    One entry more than there are store classes, -1, so that unknown labels (-1) map to -1.
    """
    from .combiner import OTHER

    pos = {c: i for i, c in enumerate(pred_classes)}
    other = pos.get(OTHER, -1)
    return np.array([pos.get(c, other) for c in store_classes] + [-1], dtype=np.int64)


def short_list(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` items and the count, for one-line error messages."""
    items = list(items)
    return "[" + ", ".join(items[:n]) + (", …" if len(items) > n else "") + f"] ({len(items)})"
