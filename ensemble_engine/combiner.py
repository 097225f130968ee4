"""The combiner contract: how a fusion node turns input predictions into one output prediction.

A combiner class declares its input ``roles``, a JSON Schema for its ``params`` (defaults filled
in, unknown keys refused), whether it must be fitted on the graph's ``fit`` split, and its output
kind. The engine (``ensemble_engine.graph``) streams row chunks through ``apply``; combiners never
touch the store, so their maths is testable on plain arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jsonschema
import numpy as np

from .errors import GraphError
from .metrics import predicted_class

OTHER = "__other__"


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    x = np.asarray(scores, dtype=np.float32)
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


@dataclass(frozen=True)
class Role:
    """An input slot of a combiner. ``many``: a list of inputs, else exactly one.

    ``kinds``: the prediction kinds accepted. ``subset_ok``: inputs may cover a class subset
    (a specialist, possibly with an ``__other__`` class); otherwise their classes must equal the
    store's.
    """

    name: str
    many: bool = True
    kinds: tuple[str, ...] = ("logits", "probs", "labels")
    subset_ok: bool = False
    doc: str = ""


@dataclass
class InputChunk:
    """Rows of one input prediction. ``classes`` is the input's own class space."""

    id: str
    kind: str
    classes: list[str]
    meta: dict[str, Any]
    scores: np.ndarray | None = None  # float32 [n, k] for kind logits/probs
    label_ids: np.ndarray | None = None  # int [n] for kind labels (index into ``classes``)

    def __len__(self) -> int:
        arr = self.scores if self.scores is not None else self.label_ids
        return 0 if arr is None else len(arr)

    @property
    def has_scores(self) -> bool:
        return self.scores is not None

    def probs(self) -> np.ndarray:
        """Probabilities [n, k]: softmax of logits, probs as stored; labels cannot become probs."""
        if self.kind == "logits":
            return softmax(self.scores)
        if self.kind == "probs":
            return np.asarray(self.scores, dtype=np.float32)
        raise GraphError(
            f"input {self.id!r} holds labels, which cannot be turned into probabilities"
        )

    def labels(self) -> np.ndarray:
        """Predicted class index [n] in this input's class space (export's tie rule)."""
        if self.label_ids is not None:
            return np.asarray(self.label_ids, dtype=np.int64)
        return predicted_class(self.scores)


class InputSource(ABC):
    """One input on the fit split, as a whole or streamed by rows (what ``fit`` receives)."""

    id: str
    kind: str
    classes: list[str]
    meta: dict[str, Any]

    @abstractmethod
    def iter_chunks(self) -> Iterator[tuple[slice, InputChunk]]: ...

    def read(self) -> InputChunk:
        parts = [chunk for _, chunk in self.iter_chunks()]
        first = parts[0]
        if first.scores is not None:
            return InputChunk(
                self.id,
                self.kind,
                self.classes,
                self.meta,
                scores=np.concatenate([p.scores for p in parts]),
            )
        return InputChunk(
            self.id,
            self.kind,
            self.classes,
            self.meta,
            label_ids=np.concatenate([p.label_ids for p in parts]),
        )


class ArrayInput(InputSource):
    """An ``InputSource`` over an in-memory array (tests, small data)."""

    def __init__(
        self,
        id: str,
        kind: str,
        data: np.ndarray,
        classes: list[str],
        meta: dict[str, Any] | None = None,
        chunk_rows: int = 4096,
    ) -> None:
        self.id, self.kind, self.classes, self.meta = id, kind, list(classes), dict(meta or {})
        self.data, self.chunk_rows = np.asarray(data), chunk_rows

    def iter_chunks(self) -> Iterator[tuple[slice, InputChunk]]:
        for start in range(0, len(self.data), self.chunk_rows):
            rows = slice(start, min(start + self.chunk_rows, len(self.data)))
            yield rows, self.chunk(rows)

    def chunk(self, rows: slice) -> InputChunk:
        part = self.data[rows]
        if self.kind == "labels":
            return InputChunk(self.id, self.kind, self.classes, self.meta, label_ids=part)
        return InputChunk(
            self.id, self.kind, self.classes, self.meta, scores=part.astype(np.float32)
        )


@dataclass
class Output:
    """What ``apply`` returns for a block of rows."""

    kind: str  # "probs" | "logits" | "labels"
    scores: np.ndarray | None = None  # [n, K] over the store's classes
    labels: np.ndarray | None = None  # [n] store class index
    votes: np.ndarray | None = None  # [n, K] optional vote counts for kind labels


class Combiner(ABC):
    """Base class of combiner plugins; register the class itself through ``register_combiners``."""

    roles: ClassVar[tuple[Role, ...]] = (Role("inputs"),)
    params_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    needs_fit: ClassVar[bool] = False
    output_kind: ClassVar[str] = "probs"
    # True: ``apply`` receives scores as stored (``InputChunk.scores`` may be float16) instead
    # of widened to float32; for combiners whose arithmetic widens exactly itself.
    scores_as_stored: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        self.params = self.validate_params(params or {})
        self.classes = list(classes or [])
        self.fitted_state: dict[str, Any] = {}

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        schema = {"additionalProperties": False, **cls.params_schema}
        try:
            jsonschema.validate(params, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "params"
            raise GraphError(f"{where}: {exc.message}") from None
        filled = {
            k: v["default"] for k, v in schema.get("properties", {}).items() if "default" in v
        }
        filled.update(params)
        return filled

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:  # noqa: B027
        """Learn from the fit split (``labels`` are store class indices). Default: nothing."""

    def observe(  # noqa: B027
        self,
        split: str,
        inputs: dict[str, list[InputSource]],
        labels: np.ndarray,
        on_fit_split: bool,
    ) -> None:
        """See a whole split before it is written (``labels``: -1 where unknown); what
        ``state()`` returns next is recorded with that split. Default: nothing."""

    @abstractmethod
    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        """Combine one block of rows. ``on_fit_split`` asks for out-of-fold output where fitted."""

    def state(self) -> dict[str, Any]:
        """JSON-able facts of the fitted combiner, recorded in the output's metadata."""
        return dict(self.fitted_state)


@dataclass
class CombinerInfo:
    name: str
    description: str
    roles: list[dict[str, Any]] = field(default_factory=list)
    params_schema: dict[str, Any] = field(default_factory=dict)
    needs_fit: bool = False
    output_kind: str = "probs"
