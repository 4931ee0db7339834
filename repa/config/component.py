"""A component choice in an experiment (defined in `repa.plugins.component`, below the components,
whose params may name other components)."""

from repa.plugins.component import Component, Kind

__all__ = ["Component", "Kind"]
