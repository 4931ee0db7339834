"""Rich tables printed by the CLI."""

from __future__ import annotations

from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from repa.errors import RepaError
from repa.plugins import KINDS, Entry, get_components

ALIASES = {"alignment": "alignment_loss", "alignment-loss": "alignment_loss", "loss": "alignment_loss"}


def _kind(name: str | None) -> list[str]:
    if name is None:
        return list(KINDS)
    kind = ALIASES.get(name, name.rstrip("s") if name.rstrip("s") in KINDS else name)
    if kind not in KINDS:
        raise RepaError(f"unknown kind {name!r}; kinds are: {', '.join(KINDS)}")
    return [kind]


def describe_params(entry: Entry) -> str:
    parts = []
    for name, info in entry.params.model_fields.items():
        if info.default is PydanticUndefined and info.default_factory is None:
            parts.append(f"{name} (required)")
        else:
            default = info.default_factory() if info.default_factory else info.default
            parts.append(f"{name}={default!r}")
    return ", ".join(parts) or "-"


def print_plugins(kind_name: str | None) -> int:
    components = get_components()
    kinds = _kind(kind_name)
    table = Table(show_lines=False, title="repa components")
    for column in ("kind", "name", "parameters (defaults)", "distribution", "description"):
        table.add_column(column, overflow="fold")
    infos = {e.name: e.info(e.params()) for k in kinds for e in components[k] if e.info} if len(kinds) == 1 else {}
    info_columns = list(dict.fromkeys(c for info in infos.values() for c in info))
    for column in info_columns:
        table.add_column(column, overflow="fold")
    for kind in kinds:
        for entry in components[kind]:
            extra = [str(infos.get(entry.name, {}).get(c, "")) for c in info_columns]
            table.add_row(kind, entry.name, describe_params(entry), entry.distribution, entry.description, *extra)
    console = Console(width=200)
    console.print(table)
    for line in components.failed:
        console.print(f"failed: {line}", markup=False, highlight=False)
    return 0


def check_outcome(kind: str, entry: Entry) -> tuple[str, str]:
    """("ok" | "not checked" | "FAIL", reason) of the contract kit on one registered component."""
    from repa.errors import ContractError
    from repa.testing import check_component

    try:
        check_component(kind, entry.name)
    except ContractError as exc:
        return "FAIL", str(exc)
    except RepaError as exc:  # weights or data this machine does not have; required parameters
        return "not checked", str(exc).splitlines()[0]
    except Exception as exc:  # a third-party factory or a built-in that raised: never a traceback here
        return "FAIL", f"{entry.label}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return "ok", ""


def print_check(kind_name: str | None) -> int:
    """`repa plugins --check`: every component built on tiny inputs and checked (repa.testing);
    exit 2 when one breaks its contract or a plugin failed to load."""
    components = get_components()
    console = Console(width=200)
    failures = 0
    for kind in _kind(kind_name):
        for entry in components[kind]:
            outcome, reason = check_outcome(kind, entry)
            failures += outcome == "FAIL"
            console.print(f"{outcome:11s} {kind} {entry.name} ({entry.distribution}){': ' + reason if reason else ''}",
                          markup=False, highlight=False)
    for line in components.failed:
        failures += 1
        console.print(f"{'FAIL':11s} {line}", markup=False, highlight=False)
    console.print(f"{failures} contract failure(s)", markup=False, highlight=False)
    return 2 if failures else 0


def print_results(title: str, rows: list[dict]) -> None:
    """One row per evaluated checkpoint (or sample batch), one column per metric."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    Console(width=160).print(table)
