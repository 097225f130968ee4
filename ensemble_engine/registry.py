"""Named registries of plugin-provided things (losses, producers, combiners, TTA views, datasets).

Each entry is a frozen dataclass. The core owns names, aliases and clash detection: a second
registration of a name (or alias) raises ``PluginError`` naming both plugins.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PluginError


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, how to build it, and who provided it.

    ``target`` is the factory itself or a ``"module:attribute"`` string imported on first use,
    so that ``ee ls`` does not pay for importing torch and timm.
    """

    name: str
    target: Callable[..., Any] | str
    description: str = ""
    plugin: str = "?"
    aliases: tuple[str, ...] = ()
    capabilities: Mapping[str, Any] = field(default_factory=dict)

    @property
    def factory(self) -> Callable[..., Any]:
        if isinstance(self.target, str):
            return _import_target(self.target, self.plugin)
        return self.target


@functools.cache
def _import_target(target: str, plugin: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"plugin {plugin!r} registered {target!r}, which cannot be imported "
            f"({exc}); reinstall the plugin"
        ) from None
    return obj


class Registry:
    """A name → ``Entry`` map with aliases, fnmatch filtering and clash detection."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        description: str = "",
        aliases: tuple[str, ...] | list[str] = (),
        plugin: str = "?",
        **capabilities: Any,
    ) -> Entry:
        if not isinstance(name, str) or not name or name != name.strip():
            raise PluginError(
                f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}"
            )
        entry = Entry(name, factory, description, plugin, tuple(aliases), dict(capabilities))
        for key in (name, *entry.aliases):
            owner = self._owner(key)
            if owner is not None:
                raise PluginError(
                    f"{self.kind} name {key!r} is registered by both plugin {owner.plugin!r} and "
                    f"plugin {plugin!r}; uninstall one or disable it with EE_PLUGINS"
                )
        self._entries[name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = name
        return entry

    def _owner(self, key: str) -> Entry | None:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def resolve(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = ", ".join(sorted(self._entries)) or "none"
        raise PluginError(f"unknown {self.kind} {name!r}; known: {known}")

    def get(self, name: str) -> Entry:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def list(self, pattern: str = "*") -> list[Entry]:
        """Entries whose name or an alias matches the fnmatch ``pattern``."""
        return [
            e for e in self if any(fnmatch.fnmatchcase(n, pattern) for n in (e.name, *e.aliases))
        ]

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<exports[name]>`` on first access.

    Plugins re-export their classes this way so that loading the plugin (to list commands or
    read a store) does not import torch, timm or scikit-learn.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
