"""Rich tables printed by the CLI."""

from __future__ import annotations

import textwrap

from pydantic import ValidationError
from pydantic_core import PydanticUndefined
from rich.table import Table

from repa.console import output_console
from repa.errors import RepaError
from repa.plugins import KINDS, Entry, get_components
from repa.plugins.component import Kind

ALIASES = {"alignment": "alignment_loss", "alignment-loss": "alignment_loss", "loss": "alignment_loss",
           "attention": "attention_loss", "attention-loss": "attention_loss"}


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
        component = next((m for m in info.metadata if isinstance(m, Kind) and m.default is not None), None)
        if component is not None:  # a component-valued key with a shorthand default (text_encoder="clip-vit-l14")
            parts.append(f"{name}={component.default!r}")
        elif info.default is PydanticUndefined and info.default_factory is None:
            parts.append(f"{name} (required)")
        else:
            default = info.default_factory() if info.default_factory else info.default
            parts.append(f"{name}={default!r}")
    return ", ".join(parts) or "-"


def print_plugins(kind_name: str | None) -> int:
    """Each component as a few lines wrapped to the terminal's width (rich's detection, so
    COLUMNS too): name and distribution, description, parameters, facts. Printed without markup,
    so `[low, high]` in a description stays."""
    components = get_components()
    kinds = _kind(kind_name)
    console = output_console(highlight=False)
    width = max(40, console.width)
    title = "repa components" if len(kinds) > 1 else f"repa {kinds[0].replace('_', ' ')} components"
    lines = [title, ""]
    for kind in kinds:
        entries = list(components[kind])
        lines.append(f"{kind} ({len(entries)})")
        for entry in entries:
            lines += _wrap(f"{entry.name}  (from {entry.distribution})", width, "  ")
            lines += _wrap(entry.description or "(no description)", width, "    ")
            lines += _wrap(f"parameters: {describe_params(entry)}", width, "    ")
            facts = component_facts(kind, entry) if len(kinds) == 1 else {}  # one kind: worth the imports
            if facts:
                lines += _wrap(" | ".join(f"{k}: {v}" for k, v in facts.items()), width, "    ")
        lines.append("")
    lines += [wrapped for line in components.failed for wrapped in _wrap(f"failed: {line}", width, "")]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """Lines of at most `width` characters; words longer than a line are split, never cut."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False) or [indent]


def component_facts(kind: str, entry: Entry) -> dict:
    """What the component's own `info` says; for encoders, what the contract lets us compute
    for any of them (a plugin's included), so no column is left blank."""
    try:
        params = entry.params()
    except ValidationError:
        return {"parameters": "required ones have no default: facts need them"} if kind == "encoder" else {}
    facts = dict(entry.info(params)) if entry.info else {}
    if kind == "encoder":
        facts.setdefault("dim", _fact(params.embed_dim))
        facts.setdefault("tokens at 256 px", _fact(lambda: params.tokens_for(256)))
        facts.setdefault("weights here", "not reported by its plugin (it says where it looks when built)")
    return facts


def _fact(compute) -> str:
    try:
        return str(compute())
    except Exception as exc:  # a plugin's params method: a fact we cannot show is said, not raised
        return f"unknown ({type(exc).__name__})"


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
    console = output_console()
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
        table.add_column(column, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    output_console().print(table)


def print_analysis_tables(found) -> None:
    """`repa analyze`'s tables: (title, header, rows) each."""
    console = output_console()
    for title, header, body in found:
        table = Table(title=title)
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
        for row in body:
            table.add_row(*row)
        console.print(table)
