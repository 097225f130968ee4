"""Running a plan: fit on the fit split, stream every split through ``apply``, write with lineage.

Memory stays at one row block per input: each split is walked in blocks of the output's chunk
size, every input delivers the same rows (reading each of its stored chunks once, whatever its
own chunking, the next one on the store's I/O threads while this one is combined), and the
output block goes straight to the store. Only what a combiner's ``fit`` chooses to hold can be
larger. Node outputs are float32: fused scores differ in small amounts, and float16 rounding
would make ties that change a later vote.

``apply`` sees float32 scores, except in a combiner whose class sets ``scores_as_stored =
True``: it takes them as stored (float16 or float32, ``iter_rows(dtype="stored")``) and
converts them itself. Widening float16 with numpy costs several times more than reading the
chunk, while a kernel that reads float16 (torch's softmax) widens on the way at no cost worth
measuring: a soft vote over 66 inputs then streams at the speed of its maths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..combiner import Combiner, InputChunk, InputSource, Output
from ..cost import fused_cost
from ..errors import GraphError, StoreError
from ..prediction_io import PredictionWriter, chunk_rows_for
from ..store import PredictionStore
from .planner import Plan, PlannedNode
from .roles import InputRef

if TYPE_CHECKING:
    from .parallel import SplitPool


@dataclass
class NodeResult:
    """What happened to one node, with the metrics of its written predictions."""

    id: str
    combiner: str
    cached: bool
    inputs: dict[str, list[str]]
    node_hash: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split → top1, top5, ...
    gain: dict[str, float | None] = field(default_factory=dict)  # split → top-1 over best input
    state: dict[str, Any] = field(default_factory=dict)


def make_chunk(source: InputSource, block: np.ndarray) -> InputChunk:
    if source.kind == "labels":
        return InputChunk(source.id, source.kind, source.classes, source.meta, label_ids=block)
    return InputChunk(source.id, source.kind, source.classes, source.meta, scores=block)


class StoreInput(InputSource):
    """One input on one split, streamed from the store chunk by chunk (what ``fit`` receives)."""

    def __init__(self, store: PredictionStore, ref: InputRef, split: str, meta: dict) -> None:
        self.store, self.split = store, split
        self.id, self.kind, self.classes, self.meta = ref.name, ref.kind, list(ref.classes), meta

    def iter_chunks(self) -> Iterator[tuple[slice, InputChunk]]:
        for rows, block in self.store.iter_rows(self.id, self.split):
            yield rows, make_chunk(self, block)


class RunState:
    """What a run reads more than once: split facts and prediction attrs, each read once.

    A node's own attrs are forgotten when it is (re)written, so they are read fresh.
    """

    def __init__(self, plan: Plan, store: PredictionStore) -> None:
        self.plan, self.store = plan, store
        self.splits = {s: store.split(s) for s in plan.splits}
        self._attrs: dict[tuple[str, str], dict[str, Any]] = dict(plan.stored_attrs)

    def attrs(self, name: str, split: str) -> dict[str, Any]:
        if (name, split) not in self._attrs:
            self._attrs[(name, split)] = self.store.get(name, split).attrs
        return self._attrs[(name, split)]

    def forget(self, name: str) -> None:
        self._attrs = {k: v for k, v in self._attrs.items() if k[0] != name}

    def source(self, ref: InputRef, split: str) -> StoreInput:
        return StoreInput(self.store, ref, split, self.attrs(ref.name, split))

    def cost(self, pn: PlannedNode, split: str, combiner: Combiner | None = None) -> dict[str, Any]:
        """The ``cost`` attr of ``pn``'s output on ``split``: its inputs' members summed.

        A combiner that reads only some of its inputs at apply time says which in its state's
        ``chosen`` (``select``, a budgeted ``soft_vote``): its output costs those only.
        """

        def attrs_of(name: str) -> dict[str, Any] | None:
            if (name, split) in self._attrs or self.store.exists(name, split):
                return self.attrs(name, split)
            return None

        chosen = combiner.state().get("chosen") if combiner is not None else None
        inputs = pn.inputs
        if isinstance(chosen, dict):
            inputs = [name for name in pn.inputs if chosen.get(name)]
        return fused_cost(inputs, attrs_of)


class RowReader:
    """Consecutive row blocks of one input, each stored chunk read once whatever the block size."""

    def __init__(self, source: StoreInput, as_stored: bool = False) -> None:
        self.source = source
        store, name, split = source.store, source.id, source.split
        self._chunks = (
            store.iter_rows(name, split, dtype="stored")
            if as_stored
            else store.iter_rows(name, split)
        )
        self._held: list[np.ndarray] = []
        self._next = 0

    def take(self, rows: slice) -> InputChunk:
        if rows.start != self._next:
            raise RuntimeError("RowReader serves consecutive row blocks only")
        need = rows.stop - rows.start
        while sum(len(b) for b in self._held) < need:
            try:
                self._held.append(next(self._chunks)[1])
            except StopIteration:
                raise StoreError(
                    f"{self.source.id}/{self.source.split} has fewer rows than its "
                    "split; the prediction is damaged, re-produce it"
                ) from None
        data = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        rest = data[need:]
        self._held = [rest] if len(rest) else []
        self._next = rows.stop
        return make_chunk(self.source, data[:need])


def execute(
    plan: Plan,
    store: PredictionStore,
    force: bool = False,
    console: Console | None = None,
    workers: int = 1,
) -> list[NodeResult]:
    """Run every node in order; cached nodes (same content hash on every split) are skipped.

    ``force`` recomputes every node. ``console`` shows a node progress bar; None is quiet.
    ``workers`` > 1 writes each split's rows from that many processes (``graph.parallel``);
    the stored result is the same as with one.
    """
    from .parallel import SplitPool

    if store.mode == "r":
        raise StoreError(f"store {store.path} is open read-only; open it with mode 'a' to combine")
    results: list[NodeResult] = []
    run = RunState(plan, store)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        SplitPool(store, workers) as pool,
        Progress(
            *columns,
            console=console,
            disable=console is None or not console.is_terminal,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("fusion graph", total=len(plan.nodes))
        for pn in plan.nodes:
            bar.update(task, description=f"{pn.id} ({pn.combiner})")
            cached = pn.cached and not force
            if not cached:
                run.forget(pn.id)
                try:
                    run_node(run, pn, pool)
                except GraphError as exc:  # a combiner's complaint, placed in the graph
                    where = f"{plan.spec.source}:{pn.line}: node '{pn.id}'"
                    raise GraphError(f"{where}: {exc}") from None
            results.append(_result(run, pn, cached))
            bar.advance(task)
    return results


def run_node(run: RunState, pn: PlannedNode, pool: SplitPool | None = None) -> None:
    """Build the combiner, fit it if it asks to be, and write the node on every split."""
    plan = run.plan
    combiner = pn.factory(dict(pn.params), classes=list(plan.classes))
    if combiner.needs_fit:
        sources = {role: [run.source(r, plan.fit) for r in refs] for role, refs in pn.roles.items()}
        combiner.fit(sources, run.splits[plan.fit].labels.astype(np.int64))
    for split in plan.splits:
        sources = {role: [run.source(r, split) for r in refs] for role, refs in pn.roles.items()}
        labels = run.splits[split].labels.astype(np.int64)
        combiner.observe(split, sources, labels, split == plan.fit)  # before its state is written
        if pool is None or not pool.write_split(run, pn, combiner, split):
            _write_split(run, pn, combiner, split)
    run.forget(pn.id)


def _write_split(run: RunState, pn: PlannedNode, combiner: Combiner, split: str) -> None:
    plan, store = run.plan, run.store
    n, k = run.splits[split].n, len(plan.classes)
    step = chunk_rows_for(k, 4)
    as_stored = bool(getattr(combiner, "scores_as_stored", False))
    readers = {
        role: [RowReader(run.source(ref, split), as_stored) for ref in refs]
        for role, refs in pn.roles.items()
    }
    with ExitStack() as stack:
        writer: PredictionWriter | None = None
        has_votes = False
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            out = apply_block(pn, combiner, readers, rows, split == plan.fit)
            if writer is None:
                writer = stack.enter_context(
                    store.prediction_writer(
                        pn.id,
                        split,
                        kind=out.kind,
                        meta=lineage(plan, pn, combiner, run.cost(pn, split, combiner)),
                        dtype="float32",
                        replace=True,
                        chunk_rows=step,
                    )
                )
                has_votes = out.votes is not None
            if (out.votes is not None) != has_votes:
                raise GraphError(
                    f"combiner {pn.combiner} returned votes for some row blocks "
                    "only; fix the plugin"
                )
            writer.write(out.labels if out.kind == "labels" else out.scores)
            if has_votes:
                writer.write_votes_at(rows.start, out.votes)


def apply_block(
    pn: PlannedNode,
    combiner: Combiner,
    readers: dict[str, list[RowReader]],
    rows: slice,
    on_fit_split: bool,
) -> Output:
    """One row block through the combiner: every input's rows in, the checked output out."""
    chunks = {role: [r.take(rows) for r in rs] for role, rs in readers.items()}
    out = combiner.apply(chunks, rows=rows, on_fit_split=on_fit_split)
    _check_output(pn, out, rows)
    return out


def _check_output(pn: PlannedNode, out: Output, rows: slice) -> None:
    declared = pn.factory.output_kind
    data = out.labels if out.kind == "labels" else out.scores
    if out.kind != declared or data is None or len(data) != rows.stop - rows.start:
        raise GraphError(
            f"combiner {pn.combiner} returned {out.kind} for {rows.stop - rows.start} "
            f"rows that do not match its declared {declared} output; fix the plugin"
        )


def lineage(
    plan: Plan, pn: PlannedNode, combiner: Combiner, cost: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The attrs that say how a node output was made (and, given, what it costs per image)."""
    meta = {
        "source": {
            "type": "combiner",
            "plugin": pn.plugin,
            "plugin_version": pn.plugin_version,
            "params": pn.params,
        },
        "combiner": pn.combiner,
        "inputs": pn.inputs,
        "roles": {role: [r.name for r in refs] for role, refs in pn.roles.items()},
        "graph": plan.spec.hash,
        "graph_name": plan.spec.name,
        "node_hash": pn.node_hash,
        "state": combiner.state(),
    }
    if pn.binding:
        meta["foreach"] = dict(pn.binding)
    if cost is not None:
        meta["cost"] = cost
    return meta


def _result(run: RunState, pn: PlannedNode, cached: bool) -> NodeResult:
    roles = {role: [r.name for r in refs] for role, refs in pn.roles.items()}
    result = NodeResult(pn.id, pn.combiner, cached, roles, pn.node_hash)
    for split in run.plan.splits:
        attrs = run.attrs(pn.id, split)
        result.metrics[split] = dict(attrs.get("metrics") or {})
        result.state = dict(attrs.get("state") or {})
        best = [
            (run.attrs(r.name, split).get("metrics") or {}).get("top1")
            for refs in pn.roles.values()
            for r in refs
            if list(r.classes) == run.plan.classes
        ]
        best = [b for b in best if b is not None]
        top1 = result.metrics[split].get("top1")
        result.gain[split] = None if top1 is None or not best else top1 - max(best)
    return result
