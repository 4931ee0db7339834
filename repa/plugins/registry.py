"""Registry: the named components of one kind, each remembering who provided it."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from repa.errors import PluginError
from repa.interfaces import Params


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
        return self.factory(params if params is not None else self.params(), **kwargs)


class UnknownComponentError(PluginError, KeyError):
    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {kind.replace('_', ' ')} {name!r}{hint} (`repa plugins {kind}` lists them)")

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class Registry:
    kind: str
    params_base: type[Params] = Params
    _entries: dict[str, Entry] = field(default_factory=dict)
    _provider: str = "<unknown>"

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
    ) -> Entry:
        params = params or NoParams
        if name in self._entries:
            first = self._entries[name].distribution
            raise PluginError(
                f"{self.kind.replace('_', ' ')} {name!r} is registered twice: by distribution "
                f"{first!r} and by {self._provider!r}; uninstall one of them or rename the component"
            )
        if not (isinstance(params, type) and issubclass(params, self.params_base)):
            raise PluginError(
                f"{self.kind} {name!r} from {self._provider!r}: params must subclass "
                f"{self.params_base.__module__}.{self.params_base.__qualname__}, got {params!r}"
            )
        entry = Entry(self.kind, name, factory, params, description, self._provider, info)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        """Exact name, else a unique case-insensitive match, else an error with close matches."""
        if name in self._entries:
            return self._entries[name]
        folded = [n for n in self._entries if n.lower() == name.lower()]
        if len(folded) == 1:
            return self._entries[folded[0]]
        raise UnknownComponentError(self.kind, name, self.suggest(name))

    def suggest(self, name: str) -> list[str]:
        by_lower = {n.lower(): n for n in self._entries}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        return [by_lower[c] for c in close]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def filter(self, pattern: str) -> list[Entry]:
        """Entries whose name matches a glob pattern (case-insensitive), like timm.list_models."""
        return [e for n, e in sorted(self._entries.items()) if fnmatch.fnmatch(n.lower(), pattern.lower())]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
