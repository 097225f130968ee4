"""The project's own error types.

Everything a user can cause (bad input, a broken store, a missing plugin) raises ``EEError`` or a
subclass. The CLI turns these into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class EEError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class StoreError(EEError):
    """The prediction store is missing, malformed, or asked for something it cannot do."""


class FormatVersionError(StoreError):
    """The store was written by a newer, incompatible format version."""


class AlignmentError(StoreError):
    """Predictions do not share a split fingerprint or a class space."""


class PluginError(EEError):
    """A plugin is missing, misnamed, or clashes with another plugin."""


class GraphError(EEError):
    """A fusion graph file is invalid."""


class RecipeError(EEError):
    """A training recipe or one of its overrides is invalid."""


class DataError(EEError):
    """A data folder is missing, empty or malformed."""
