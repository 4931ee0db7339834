"""Reading an experiment file, and finding the line on which each key was written.

tomli gives values, not positions; `key_lines` scans the text once to map every key path
(including `[[array]]` indices) to its line, so that errors can say FILE:LINE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import tomli

from repa.errors import ConfigError

KeyPath = tuple  # of str (keys) and int (array-of-tables indices)

_KEY_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+))\s*')


def read_toml(path: str | Path) -> tuple[dict, str]:
    """Parse an experiment file; every failure is a ConfigError with one located line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: no such file; check the path (experiments live in experiments/)"])
    if path.is_dir():
        tomls = sorted(p.name for p in path.glob("*.toml"))[:5]
        hint = f" such as {path / tomls[0]}" if tomls else ""
        raise ConfigError([f"{path}: is a directory; pass an experiment .toml file{hint}"])
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); save the file as UTF-8"]
        ) from None
    if not text.strip():
        raise ConfigError(
            [f"{path}:1: the file is empty; an experiment needs at least [data] and [backbone] "
             "(start from experiments/quickstart.toml)"]
        )
    try:
        raw = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError([f"{path}:{exc.lineno}: invalid TOML: {exc.msg} (column {exc.colno})"]) from None
    except RecursionError:
        raise ConfigError([too_deep(str(path))]) from None
    return raw, text


def too_deep(where: str) -> str:
    return f"{where}: values nested more than {MAX_NESTING} levels deep; an experiment needs a few (section, table, list)"


MAX_NESTING = 16  # an experiment needs 4 (alignment[0].encoder.kind); deeper is a mistake or an attack


def nesting(value) -> int:
    """How deeply tables and arrays nest in `value`, counted without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_dotted_key(text: str) -> tuple[str, ...]:
    """`a."b.c".d` -> ('a', 'b.c', 'd')."""
    parts, pos = [], 0
    while pos < len(text):
        match = _KEY_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            break
        parts.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
        if pos < len(text) and text[pos] == ".":
            pos += 1
    return tuple(parts)


def _split_key_value(line: str) -> tuple[str, str] | None:
    """Split `key = value` at the first '=' outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return line[:i], line[i + 1 :]
    return None


def _scan_value(value: str, depth: int, in_string: str | None) -> tuple[int, str | None]:
    """Track bracket depth and open multi-line strings across lines of one value."""
    i = 0
    while i < len(value):
        if in_string:
            if value.startswith(in_string, i):
                i += len(in_string)
                in_string = None
                continue
            if in_string == '"' and value[i] == "\\":
                i += 2
                continue
            i += 1
            continue
        for delim in ('"""', "'''", '"', "'"):
            if value.startswith(delim, i):
                in_string, i = delim, i + len(delim)
                break
        else:
            ch = value[i]
            if ch == "#":
                break
            depth += (ch in "[{") - (ch in "]}")
            i += 1
    if in_string in ('"', "'"):  # single-line strings cannot span lines
        in_string = None
    return depth, in_string


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path written in `text` to its 1-based line number."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    depth, in_string = 0, None
    for lineno, raw in enumerate(text.splitlines(), 1):
        if depth > 0 or in_string:
            depth, in_string = _scan_value(raw, depth, in_string)
            continue
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            name = parse_dotted_key(stripped[2 : stripped.find("]]")])
            index = array_counts.get(name, 0)
            array_counts[name] = index + 1
            table = name + (index,)
            lines.setdefault(name, lineno)
            lines[table] = lineno
            continue
        if stripped.startswith("["):
            table = parse_dotted_key(stripped[1 : stripped.find("]")])
            lines[table] = lineno
            continue
        split = _split_key_value(stripped)
        if split is None:
            continue
        key, value = split
        lines[table + parse_dotted_key(key)] = lineno
        depth, in_string = _scan_value(value, 0, None)
    return lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """Line of the longest written prefix of `path` (1 if nothing of it was written)."""
    for end in range(len(path), 0, -1):
        if tuple(path[:end]) in lines:
            return lines[tuple(path[:end])]
    return 1


# ============================================================================
# Where a key came from, and located issues
# ============================================================================


@dataclass
class Issue:
    path: KeyPath
    message: str


@dataclass
class Source:
    """Where each key came from: a line of the file, or a --set argument."""

    file: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overridden: dict[KeyPath, str] = field(default_factory=dict)
    aliases: dict[KeyPath, KeyPath] = field(default_factory=dict)  # expanded entry -> written entry

    def _written(self, path: KeyPath) -> KeyPath:
        for end in range(len(path), 0, -1):
            if path[:end] in self.aliases:
                return self.aliases[path[:end]] + path[end:]
        return path

    def locate(self, path: KeyPath) -> str:
        written = self._written(path)
        for end in range(len(written), 0, -1):
            if written[:end] in self.overridden:
                return f"--set {self.overridden[written[:end]]}"
        below = [arg for key, arg in self.overridden.items() if key[: len(written)] == written]
        if below:  # a section-level problem caused by --set on a key inside it
            return "--set " + ", --set ".join(below)
        return f"{self.file}:{line_of(self.lines, written)}"

    def sort_key(self, path: KeyPath) -> int:
        return line_of(self.lines, self._written(path))

    def format(self, issues: Iterable[Issue]) -> list[str]:
        ordered = sorted(issues, key=lambda i: self.sort_key(i.path))
        return [f"{self.locate(i.path)}: {dotted(i.path) or '<file>'}: {i.message}" for i in ordered]


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
