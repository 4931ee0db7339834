"""A component choice in an experiment: a registered name plus its validated params."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from repa.interfaces import Params


@dataclass(frozen=True)
class Kind:
    """Field metadata: this field holds a component of `kind`; `default` is its shorthand default."""

    kind: str
    default: str | None = None


@dataclass(frozen=True)
class Component:
    """`kind` is the registered name; attribute access falls through to the params."""

    kind: str
    params: Params
    entry: Any = field(default=None, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("kind", "params", "entry"):
            raise AttributeError(name)
        return getattr(self.params, name)

    def build(self, **kwargs: Any) -> Any:
        """Call the registered factory with the params and the engine's keyword arguments; the
        object is checked against its kind's contract (repa.plugins.contract)."""
        return self.entry.build(self.params, **kwargs)

    def identity(self) -> str:
        """Equal for two choices of the same component with the same params (params models need not be hashable)."""
        return f"{self.kind}:{self.params.model_dump_json()}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params.model_dump(mode="json", exclude_none=True)}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler):
        # Components are validated by the registry (two-phase); pydantic only checks the type.
        return core_schema.is_instance_schema(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(lambda c: c.to_dict())
        )
