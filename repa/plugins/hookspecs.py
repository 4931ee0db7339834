"""The hook specifications of the `repa` pluggy project: one registration hook per kind, generated
from the kind declarations (`repa.plugins.kinds`).

A plugin is a module with functions decorated by `repa.plugins.hookimpl`, exposed as an
entry point in group "repa" of its distribution:

    [project.entry-points.repa]
    my_encoders = "my_package.repa_plugin"

Each hook receives the registry of its kind and calls
`registry.add(name, factory, params=ParamsModel, description=...)`. `registry.add` checks the
factory's signature and the params model against the kind's declaration; the built object is
checked against the kind's base class in `repa.interfaces`. Keep plugin modules light: import
torch, timm, open_clip inside factories, never at module top.
"""

from __future__ import annotations

import pluggy

from repa.plugins.kinds import HOOKS, KIND_SPECS, KINDS, hook_doc

PROJECT = "repa"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _hookspec(spec):
    def register(registry):
        """(replaced below)"""

    register.__name__ = register.__qualname__ = spec.hook
    register.__doc__ = hook_doc(spec)
    return hookspec(register)


for _spec in KIND_SPECS:  # one module-level function per kind, as pluggy reads them
    globals()[_spec.hook] = _hookspec(_spec)

__all__ = ["HOOKS", "KINDS", "PROJECT", "hookimpl", "hookspec", *HOOKS.values()]
