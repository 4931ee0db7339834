"""Registry: the named components of one kind, each remembering who provided it."""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from repa.errors import ContractError, PluginError
from repa.interfaces import Params
from repa.plugins import contract


class NoParams(Params):
    """Params model of components that take no parameters."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[Params]
    description: str
    distribution: str
    # Static facts for `repa plugins` (e.g. an encoder's weight source); params -> {label: value}.
    info: Callable[[Params], dict[str, Any]] | None = None

    def build(self, params: Params | None = None, **kwargs: Any) -> Any:
        """The factory called with the engine's keywords, and the object checked against the contract."""
        params = params if params is not None else self.params()
        return contract.build(self.kind, self.name, self.distribution, self.factory, params, **kwargs)

    @property
    def label(self) -> str:
        return contract.label(self.kind, self.name, self.distribution)


class UnknownComponentError(PluginError, KeyError):
    def __init__(self, kind: str, name: str, suggestions: list[str], failed_plugins: tuple[str, ...] = ()):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        failed = ""
        if failed_plugins:  # the component may be one of theirs
            failed = f"; it may come from a plugin that failed to load: {'; '.join(failed_plugins)}"
        super().__init__(f"unknown {kind.replace('_', ' ')} {name!r}{hint} (`repa plugins {kind}` lists them)"
                         f"{failed}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class Registry:
    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _provider: str = "<unknown>"
    # One line per plugin that failed to import or register (shared by all registries).
    failed_plugins: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def provided_by(self, distribution: str) -> Iterator["Registry"]:
        """Attribute every `add` inside the block to `distribution`."""
        previous, self._provider = self._provider, distribution
        try:
            yield self
        finally:
            self._provider = previous

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        params: type[Params] | None = None,
        description: str = "",
        info: Callable[[Params], dict[str, Any]] | None = None,
    ) -> Entry | None:
        """Register `factory` under `name`, checked against the kind's contract (its signature and
        params model) before anything is built. Names are unique regardless of case, as lookup is.

        A component that breaks the contract is not registered: the violation is kept in
        `failed_plugins` (reported once a command goes on), so naming it in an experiment says why it
        is unknown."""
        params = params or NoParams
        clash = self._find(name)
        if clash is not None:
            raise PluginError(
                f"{self.kind.replace('_', ' ')} {name!r} is registered twice: as {clash.name!r} by distribution "
                f"{clash.distribution!r} and by {self._provider!r}; keep one: `pip uninstall` the other, or run "
                f"with REPA_DISABLE_PLUGIN_AUTOLOAD=1 REPA_PLUGINS=<the one to keep>"
            )
        try:
            contract.check_registration(self.kind, name, factory, params, self._provider)
        except ContractError as exc:
            self.failed_plugins.append(str(exc))
            return None
        entry = Entry(self.kind, name, factory, params, description, self._provider, info)
        self._entries[name] = entry
        return entry

    def _find(self, name: str) -> Entry | None:
        """The entry whose name equals `name` regardless of case (names are unique that way)."""
        return next((e for n, e in self._entries.items() if n.lower() == name.lower()), None)

    def get(self, name: str) -> Entry:
        """The entry named `name` (case-insensitive), else an error with close matches."""
        entry = self._find(name)
        if entry is None:
            raise UnknownComponentError(self.kind, name, self.suggest(name), tuple(self.failed_plugins))
        return entry

    def suggest(self, name: str) -> list[str]:
        by_lower = {n.lower(): n for n in self._entries}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        return [by_lower[c] for c in close]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
