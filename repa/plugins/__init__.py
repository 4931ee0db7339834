"""Plugins: pluggy hookspecs, registries and the loader. See `hookspecs` for the hooks."""

from repa.plugins.hookspecs import HOOKS, KINDS, hookimpl
from repa.plugins.manager import Components, get_components, load_components, set_components
from repa.plugins.registry import Entry, NoParams, Registry, UnknownComponentError

__all__ = [
    "HOOKS",
    "KINDS",
    "Components",
    "Entry",
    "NoParams",
    "Registry",
    "UnknownComponentError",
    "get_components",
    "hookimpl",
    "load_components",
    "set_components",
]
