"""Discovering plugins (entry points of group "repa") and filling one registry per kind.

Built-ins are loaded by exactly this code, from the entry points of our own distribution.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as metadata
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Iterable

import pluggy

from repa.errors import PluginError
from repa.plugins import hookspecs
from repa.plugins.contract import BUILTIN_DISTRIBUTION
from repa.plugins.kinds import BUILTIN_ENTRY_POINTS
from repa.plugins.registry import Registry

log = logging.getLogger("repa.plugins")

ENTRY_POINT_GROUP = "repa"
AUTOLOAD_ENV = "REPA_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "REPA_PLUGINS"
# The entry points our own pyproject declares, one per kind with built-ins (tests/test_plugins.py keeps
# the two in step): a partial list at run time means a stale install, not a missing feature.


@dataclass
class Plugin:
    name: str
    distribution: str
    module: ModuleType

    @property
    def key(self) -> str:
        """Unique per distribution: two distributions may both call an entry point `encoders`."""
        return f"{self.distribution}:{self.name}"


@dataclass
class Components:
    """All registries, plus what happened while loading them."""

    registries: dict[str, Registry]
    plugins: list[Plugin] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a misspelt hook name
    # One line per plugin (or component) that failed to import or register; unknown-name errors cite them.
    failed: list[str] = field(default_factory=list)
    _reported: bool = False

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    def report(self) -> None:
        """Log the load problems once, when a command goes on despite them (an error that names an
        unknown component already quotes the failures: they are not repeated before it)."""
        if self._reported:
            return
        self._reported = True
        for line in self.failed:
            log.warning("repa: warning: %s -- skipped; the other plugins are loaded", line)
        for line in self.warnings:
            log.warning("repa: warning: %s", line)

    def get(self, kind: str, name: str):
        return self.registries[kind].get(name)


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _explicit_from_env() -> list[str]:
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown>"


def _warn(components: Components, message: str) -> None:
    components.warnings.append(message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _failed(components: Components, name: str, distribution: str, reason: str) -> None:
    components.failed.append(f"plugin {name!r} from distribution {distribution!r} {reason}")


def _import(components: Components, name: str, distribution: str, target: str, load) -> None:
    try:
        module = load()
    except Exception as exc:  # a broken plugin must not take the others down
        _failed(components, name, distribution, f"failed to import ({target}): {type(exc).__name__}: "
                                                f"{_first_line(exc)}")
        return
    components.plugins.append(Plugin(name, distribution, module))


def _select(
    eps: list[metadata.EntryPoint], autoload: bool, explicit: list[str]
) -> tuple[list[metadata.EntryPoint], list[str]]:
    """Entry points to load, and explicit names that are module paths rather than entry points."""
    builtin = [ep for ep in eps if _dist_name(ep) == BUILTIN_DISTRIBUTION]
    missing = sorted(set(BUILTIN_ENTRY_POINTS) - {ep.name for ep in builtin})
    if missing:
        raise PluginError(
            f"repa's built-in components are not all registered: entry points {', '.join(missing)} of group "
            f"{ENTRY_POINT_GROUP!r} are missing from distribution {BUILTIN_DISTRIBUTION!r} (stale or incomplete "
            "install); reinstall with `pip install -e .` in the project directory (or `pip install repa`)"
        )
    third_party = [ep for ep in eps if _dist_name(ep) != BUILTIN_DISTRIBUTION]
    if autoload:
        return builtin + third_party, [p for p in explicit if not any(p == ep.name for ep in third_party)]
    by_name = {ep.name: ep for ep in third_party}
    by_dist = {}
    for ep in third_party:
        by_dist.setdefault(_dist_name(ep), []).append(ep)
    chosen, modules = list(builtin), []
    for p in explicit:
        if p in by_name:
            chosen.append(by_name[p])
        elif p in by_dist:
            chosen.extend(by_dist[p])
        else:
            modules.append(p)
    return chosen, modules


def load_components(
    autoload: bool | None = None,
    plugins: Iterable[str] = (),
    entry_points: list[metadata.EntryPoint] | None = None,
) -> Components:
    """Load plugins and fill the registries.

    autoload: load every installed third-party plugin (default: yes, unless the environment
        variable REPA_DISABLE_PLUGIN_AUTOLOAD is set). Built-ins always load.
    plugins: extra plugins to load, by entry-point name, distribution name or module path;
        REPA_PLUGINS (comma-separated) adds to this list.
    """
    autoload = (not _autoload_disabled()) if autoload is None else autoload
    explicit = list(plugins) + _explicit_from_env()
    eps = _entry_points() if entry_points is None else entry_points
    chosen, module_paths = _select(eps, autoload, explicit)

    failed: list[str] = []
    components = Components({k: Registry(k, failed_plugins=failed) for k in hookspecs.KINDS}, failed=failed)
    for ep in chosen:
        _import(components, ep.name, _dist_name(ep), ep.value, ep.load)
    for path in module_paths:
        _import(components, path, f"<module {path}>", path, lambda p=path: importlib.import_module(p))

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registered = []
    for plugin in components.plugins:
        if plugin.module in [p.module for p in registered]:
            continue
        try:
            pm.register(plugin.module, name=plugin.key)
        except (pluggy.PluginValidationError, ValueError) as exc:
            _failed(components, plugin.name, plugin.distribution, f"is invalid: {_first_line(exc)}")
            continue
        registered.append(plugin)
    _report_unknown_hooks(components, pm, registered)
    _call_registration_hooks(components, pm, registered)
    return components


def _report_unknown_hooks(components: Components, pm: pluggy.PluginManager, plugins: list[Plugin]) -> None:
    known = set(hookspecs.HOOKS.values())
    for plugin in plugins:
        for attr in dir(plugin.module):
            if attr.startswith("repa_") and attr not in known and callable(getattr(plugin.module, attr)):
                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                _warn(components, f"plugin {plugin.name!r} defines unknown hook {attr!r}{hint} -- ignored")


def _call_registration_hooks(components: Components, pm: pluggy.PluginManager, plugins: list[Plugin]) -> None:
    """Call each plugin's hooks in load order (built-ins first), attributing entries to its distribution."""
    for plugin in plugins:
        for kind, hook_name in hookspecs.HOOKS.items():
            impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin_name == plugin.key]
            registry = components.registries[kind]
            for impl in impls:
                with registry.provided_by(plugin.distribution):
                    try:
                        impl.function(registry=registry)
                    except PluginError:
                        raise
                    except Exception as exc:
                        _failed(components, plugin.name, plugin.distribution,
                                f"failed in {hook_name}: {type(exc).__name__}: {_first_line(exc)} (its remaining "
                                f"{kind} components are missing)")


_default: Components | None = None


def get_components() -> Components:
    """The process-wide registries, loaded once on first use."""
    global _default
    if _default is None:
        _default = load_components()
    return _default


def set_components(components: Components | None) -> None:
    """Use these registries from now on (the CLI's --plugin/--no-autoload); None: load again on
    next use (after installing a plugin in-process)."""
    global _default
    _default = components

