"""Fusion graphs: combine stored predictions in stages, each node a combiner plugin.

A graph file (YAML, version 1; the JSON Schema is ``schemas/graph.v1.schema.json``)::

    version: 1
    store: ee.zarr            # optional; relative to the graph file's folder
    fit: val                  # labelled split that fits weights and meta-learners
    apply: [val, test]        # splits every node writes (the fit split is always written too)
    nodes:
      soft_{loss}_{size}:
        foreach: {loss: auto, size: [224, 320]}
        combiner: soft_vote
        inputs: {where: {loss: "{loss}", test_size: "{size}", name: "!cov-*"}}
        params: {weights: softmax_score, temperature: 1.0}
      stage2:
        combiner: hard_vote
        inputs: ["soft_*"]
      final:
        combiner: coverage
        inputs: {base: stage2, specialists: ["cov-*"]}
    output: final

Rules worth knowing:

- ``inputs``: a name, a list of names and fnmatch globs (``!glob`` drops earlier matches), or
  ``{where: {attr: value}}`` over stored metadata (values compared as text too; a list accepts
  any item; ``name: glob`` filters names). A combiner with several roles takes
  ``{role: selection}``. Plain names are node ids first, stored prediction names second.
- A stored prediction is usable only if complete on the fit split and every apply split.
- A node writes a prediction named by its id; a producer's or an import's prediction with that
  name is an error (ambiguous, and it would be overwritten). Globs and ``where`` skip the old
  outputs of the same graph file, so a renamed node's stale output never becomes an input.
- Node outputs are written for the fit split and every apply split (fit first): the fit split's
  output is what the next stage fits on.
- ``foreach`` makes one node per combination of values, filling ``{placeholders}`` in the node
  id, inputs and params; the value ``auto`` is every value of the attribute the placeholder
  fills in a ``where`` (combinations that select nothing are then dropped), and
  ``ee combine GRAPH --set loss=ce,focal`` replaces a placeholder's values in every node.
- ``store:`` in the file is read relative to the file's folder; ``--store`` wins over it.
- The YAML is read by ``ensemble_engine.strict_yaml``: a key written twice is an error, a merge
  key (``<<: *a``, ``a`` an anchor on an earlier node) copies keys the node may then override,
  ``1e-2`` is a number, and aliases may expand to at most 100000 values.
- A graph expands to at most 10000 nodes (``expand.MAX_NODES``), checked before expanding.

Each node's output records its lineage (combiner, plugin version, params, inputs, fitted state,
graph hash, content hash). A node whose content hash is unchanged is not recomputed, so editing
one node recomputes it and its dependents only. Every problem in a graph is found before any
work and reported as one line: ``graph.yaml:LINE: node 'id': problem; fix``.

Python API::

    store = open_store("ee.zarr")
    spec = load_graph("vipriors2021")          # or a path
    results = execute(plan(spec, store), store, force=False)
"""

from __future__ import annotations

from .planner import Plan, PlannedNode, plan
from .roles import InputRef
from .runner import NodeResult, StoreInput, execute
from .source import GraphSpec, NodeTemplate, load_graph, parse_set_option, shipped_graphs

__all__ = [
    "GraphSpec",
    "InputRef",
    "NodeResult",
    "NodeTemplate",
    "Plan",
    "PlannedNode",
    "StoreInput",
    "execute",
    "load_graph",
    "parse_set_option",
    "plan",
    "shipped_graphs",
]
