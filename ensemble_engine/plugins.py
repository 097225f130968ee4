"""The plugin manager: built-ins and installed plugins, registries, an allowlist.

Built-in plugins are declared in this distribution's ``ensemble_engine`` entry-point group, the
same group a third party uses. They always load. Other installed plugins load unless the
``EE_PLUGINS`` environment variable is set: then only the comma-separated names it lists load
(``EE_PLUGINS=`` loads built-ins only). Nothing is ever imported from a graph or recipe file.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

DIST_NAME = "ensemble-engine"
ALLOWLIST_ENV = "EE_PLUGINS"
KINDS = ("losses", "datasets", "tta_views", "producers", "combiners")


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    registers: dict[str, list[str]] = field(default_factory=dict)


class PluginHost:
    """Owns the pluggy manager and one ``Registry`` per kind, with typed access to each."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind.rstrip("s").replace("_", " ")) for kind in KINDS}
        self.infos: dict[str, PluginInfo] = {}
        self._collected = False

    # --- loading ------------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        allow = os.environ.get(ALLOWLIST_ENV)
        allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
        for ep in md.entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else "?"
            builtin = dist.replace("_", "-").lower() == DIST_NAME
            if not builtin and allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            module = ep.load()
            version = ep.dist.version if ep.dist is not None else "?"
            self.add(module, ep.name, version=version, builtin=builtin)

    def add(self, plugin: Any, name: str, *, version: str = "?", builtin: bool = False) -> None:
        """Register a plugin object or module (third parties use entry points; tests use this)."""
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already loaded")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} is broken: {exc}; fix or uninstall it") from None
        self.infos[name] = PluginInfo(name, version, builtin)
        if self._collected:
            self._collect_from(name)

    # --- registries ---------------------------------------------------------------------------

    def collect(self) -> None:
        if self._collected:
            return
        self._collected = True
        for name in list(self.infos):
            self._collect_from(name)

    def _collect_from(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        info = self.infos[name]
        for kind in KINDS:
            impl = getattr(plugin, f"register_{kind}", None)
            if impl is None:
                continue
            impl(register=self._register_fn(kind, info))

    def _register_fn(self, kind: str, info: PluginInfo) -> Callable[..., Any]:
        registry = self.registries[kind]

        def register(name: str, factory: Any, **kwargs: Any) -> Any:
            entry = registry.register(name, factory, plugin=info.name, **kwargs)
            info.registers.setdefault(kind, []).append(name)
            return entry

        return register

    def registry(self, kind: str) -> Registry:
        self.collect()
        return self.registries[kind]

    @property
    def losses(self) -> Registry:
        return self.registry("losses")

    @property
    def datasets(self) -> Registry:
        return self.registry("datasets")

    @property
    def tta_views(self) -> Registry:
        return self.registry("tta_views")

    @property
    def producers(self) -> Registry:
        return self.registry("producers")

    @property
    def combiners(self) -> Registry:
        return self.registry("combiners")

    def add_commands(self, cli: Any) -> None:
        for name in list(self.infos):
            plugin = self.pm.get_plugin(name)
            impl = getattr(plugin, "register_commands", None)
            if impl is not None:
                before = set(cli.commands)
                impl(cli=cli)
                added = set(cli.commands) - before
                if added:
                    known = self.infos[name].registers.setdefault("commands", [])
                    known[:] = sorted(set(known) | added)

    def plugin_infos(self) -> list[PluginInfo]:
        self.collect()
        return sorted(self.infos.values(), key=lambda i: (not i.builtin, i.name))


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _host
    if _host is None:
        host = PluginHost()
        host.load_entry_points()
        _host = host
    return _host


def get_registry(kind: str) -> Registry:
    """The registry of one kind (``losses``, ``datasets``, ``tta_views``, ``producers``,
    ``combiners``) of the process-wide host: what plugins look each other's things up in."""
    if kind not in KINDS:
        raise PluginError(f"unknown registry {kind!r}; known: {', '.join(KINDS)}")
    return get_host().registry(kind)


def plugin_info(name: str) -> PluginInfo | None:
    """The loaded plugin ``name`` (its version, whether built in), or None."""
    return get_host().infos.get(name)


def reset_host() -> None:
    """Forget the loaded plugins (tests; a changed ``EE_PLUGINS``)."""
    global _host
    _host = None
