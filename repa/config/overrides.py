"""`--set a.b=value` overrides, applied to the parsed TOML before validation (so they are
typed by the same schema as the file)."""

from __future__ import annotations

import re

import tomli

from repa.config.source import KeyPath

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_KEY = re.compile(rf"{_NAME}(?:\.(?:{_NAME}|\d+)|\[\d+\])*")  # train.max_steps, alignment[0].depth, alignment.0.depth


def parse_value(text: str):
    """Lists, tables and quoted strings are TOML literals; any other scalar stays text and is
    converted by the schema of the key it sets, so `experiment.name=2024` is the string "2024"
    and `train.max_steps=1_000` the integer 1000."""
    try:
        value = tomli.loads(f"v = {text}")["v"]
    except (tomli.TOMLDecodeError, RecursionError):  # left as text: the schema says what it expected
        return text
    if isinstance(value, (list, dict)) or text.lstrip().startswith(("'", '"')):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return text.replace("_", "")
    return text


def parse_override(arg: str) -> tuple[KeyPath, object]:
    """'alignment[0].depth=6' or 'alignment.0.depth=6' -> (('alignment', 0, 'depth'), 6)."""
    if "=" not in arg:
        raise ValueError(f"--set {arg}: expected KEY=VALUE, e.g. --set train.max_steps=1000")
    key, value = arg.split("=", 1)
    key = key.strip()
    if not _KEY.fullmatch(key):
        raise ValueError(f"--set {arg}: {key!r} is not a key path; write names joined by '.' with list indices "
                         f"as [N], e.g. train.max_steps=1000 or alignment[0].depth=8")
    parts = [p for p in re.split(r"[.\[\]]", key) if p]
    return tuple(int(p) if p.isdigit() else p for p in parts), parse_value(value.strip())


def apply_override(raw: dict, path: KeyPath, value, on_set) -> str | None:
    """Set `path` in `raw`; returns an error message or None.

    A path through an array of tables without an index (`alignment.depth`) sets every entry.
    `on_set(full_path)` is told each concrete path written (for error locations)."""
    node, done = raw, ()
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if isinstance(part, int):
                if part >= len(node):
                    return f"index {part} is out of range: there are {len(node)} {_dotted(done)} entries"
                if last:
                    node[part] = value
                    on_set(done + (part,))
                    return None
                node, done = node[part], done + (part,)
                continue
            if not node:
                return f"there are no {_dotted(done)} entries to set"
            for index, element in enumerate(node):
                error = apply_override(element, path[i:], value, lambda p, d=done + (index,): on_set(d + p))
                if error:
                    return error
            return None
        if isinstance(part, int):
            return f"{_dotted(done)} is not a list; cannot index it with [{part}]"
        if not isinstance(node, dict):
            return f"{_dotted(done)} is a value, not a section"
        if last:
            node[part] = value
            on_set(done + (part,))
            return None
        child = node.get(part)
        if isinstance(child, str):  # component shorthand: `backbone = "SiT-B/2"` then backbone.depth=...
            child = node[part] = {"kind": child}
        elif child is None:
            child = node[part] = {}
        node, done = child, done + (part,)
    return None


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)
