"""TOML experiment file -> validated ExperimentConfig, or one located line per problem.

Validation is two-phase: every component-valued key is looked up in its registry (after
plugins load) and its remaining keys are validated by that component's own params model;
then the static schema validates the sections; then cross-field checks run.
"""

from __future__ import annotations

import copy
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from repa.config.component import Component, Kind
from repa.config.overrides import apply_override, parse_override
from repa.config.schema import ExperimentConfig
from repa.config.checks import cross_checks
from repa.config.source import (
    MAX_NESTING, Issue, KeyPath, Source, dotted, key_lines, nesting, read_toml, too_deep,
)
from repa.errors import ConfigError
from repa.plugins import Components, UnknownComponentError, get_components


# ============================================================================
# Entry points
# ============================================================================


def load_experiment(
    path: str | Path, overrides: Iterable[str] = (), components: Components | None = None,
    processes: int | None = None,
) -> ExperimentConfig:
    """processes: when training on this many processes, the global batch must split evenly over them."""
    raw, text = read_toml(path)
    return validate_experiment(raw, Source(str(path), key_lines(text)), overrides, components, processes)


def validate_experiment(
    raw: dict, source: Source, overrides: Iterable[str] = (), components: Components | None = None,
    processes: int | None = None,
) -> ExperimentConfig:
    components = components or get_components()
    _check_nesting(raw, source)  # before anything recurses into it
    raw = copy.deepcopy(raw)
    issues: list[Issue] = []
    _apply_overrides(raw, overrides, source)
    _check_nesting(raw, source)
    issues += _expand_alignment_lists(raw, source)
    _resolve_components(ExperimentConfig, raw, (), components, issues)
    if not issues:
        try:
            config = ExperimentConfig.model_validate(raw)
        except ValidationError as exc:
            issues += _translate(exc, ExperimentConfig, ())
        else:
            issues += _nonfinite_issues(config, ())
            issues += [] if issues else cross_checks(config, processes or 1)
            if not issues:
                components.report()  # plugins that failed to load: said once the command goes on
                return config
    raise ConfigError(source.format(issues))


def validate_component(kind: str, name: str, params: dict, where: str) -> Component:
    """One component outside an experiment file (a command-line option): `where` locates errors."""
    issues: list[Issue] = []
    components = get_components()
    component = _component({"kind": name, **params}, Kind(kind), (), components, issues)
    if issues:
        raise ConfigError([f"{where}: {issue.message}" for issue in issues])
    components.report()
    return component


def resolve_components(model: type[BaseModel], values: dict) -> list[str]:
    """Replace the component-valued keys of `values` (a params model's raw keys) by validated components,
    in place; -> one line per problem."""
    issues: list[Issue] = []
    _resolve_components(model, values, (), get_components(), issues)
    return [f"{dotted(issue.path)}: {issue.message}" if issue.path else issue.message for issue in issues]


def translate_errors(exc: ValidationError, model: type[BaseModel], path: KeyPath) -> list[Issue]:
    """A pydantic ValidationError of `model` (at `path`) as located issues."""
    return _translate(exc, model, path)


def _check_nesting(raw: dict, source: Source) -> None:
    if nesting(raw) > MAX_NESTING:
        raise ConfigError([too_deep(source.file)])


def _apply_overrides(raw: dict, overrides: Iterable[str], source: Source) -> None:
    for arg in overrides:
        try:
            path, value = parse_override(arg)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        error = apply_override(raw, path, value, lambda p, a=arg: source.overridden.__setitem__(p, a))
        if error:
            raise ConfigError([f"--set {arg}: {dotted(path)}: {error}"])


def _expand_alignment_lists(raw: dict, source: Source) -> list[Issue]:
    """`encoder = "dinov2-vit-b,clip-vit-L"` (the seed's --enc-type) -> one entry per encoder."""
    entries = raw.get("alignment")
    if not isinstance(entries, list):
        return []
    expanded, issues = [], []
    for written, entry in enumerate(entries):
        encoders = entry.get("encoder") if isinstance(entry, dict) else None
        if isinstance(encoders, str) and "," in encoders:
            encoders = [e.strip() for e in encoders.split(",") if e.strip()]
        if encoders == []:  # dropping the entry would silently turn a REPA run into the baseline
            issues.append(Issue(("alignment", written, "encoder"), "names no encoder; give at least one "
                                "encoder name, or remove the [[alignment]] entry for a run without alignment"))
            continue
        if isinstance(encoders, list):
            for name in encoders:
                source.aliases[("alignment", len(expanded))] = ("alignment", written)
                expanded.append({**entry, "encoder": name})
        else:
            source.aliases[("alignment", len(expanded))] = ("alignment", written)
            expanded.append(entry)
    raw["alignment"] = expanded
    return issues


# ============================================================================
# Phase 1+2: components
# ============================================================================


def _kind_of(metadata: Iterable[Any]) -> Kind | None:
    return next((m for m in metadata if isinstance(m, Kind)), None)


def _unwrap(annotation: Any) -> tuple[Any, Kind | None, bool]:
    """-> (inner type, Kind metadata, is_list) for X, Annotated[X, Kind], list[...]."""
    is_list = typing.get_origin(annotation) is list
    if is_list:
        annotation = typing.get_args(annotation)[0]
    kind = None
    if typing.get_origin(annotation) is typing.Annotated:
        kind = _kind_of(annotation.__metadata__)
        annotation = typing.get_args(annotation)[0]
    return annotation, kind, is_list


def _resolve_components(model: type[BaseModel], raw: dict, path: KeyPath, components, issues) -> None:
    """Replace every component-valued key of `raw` (recursively) by a validated Component."""
    issues += _boolean_issues(model, raw, path)
    for name, info in model.model_fields.items():
        inner, kind, is_list = _unwrap(info.annotation)
        kind = kind or _kind_of(info.metadata)
        here = path + (name,)
        if kind is not None:
            if is_list:
                values = raw.get(name, [])
                if isinstance(values, (str, dict)):
                    values = [v.strip() for v in values.split(",")] if isinstance(values, str) else [values]
                if isinstance(values, list):
                    raw[name] = [_component(v, kind, here + (i,), components, issues) for i, v in enumerate(values)]
                continue
            if name not in raw and kind.default is None:
                continue  # the static schema reports the missing key
            raw[name] = _component(raw.get(name, kind.default), kind, here, components, issues)
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            if is_list:
                items = raw.get(name)
                for i, item in enumerate(items if isinstance(items, list) else []):  # the schema reports non-lists
                    if isinstance(item, dict):
                        _resolve_components(inner, item, here + (i,), components, issues)
                continue
            if name not in raw and _has_component_fields(inner):
                raw[name] = {}
            if isinstance(raw.get(name), dict):
                _resolve_components(inner, raw[name], here, components, issues)


def _has_component_fields(model: type[BaseModel]) -> bool:
    return any(_unwrap(f.annotation)[1] or _kind_of(f.metadata) for f in model.model_fields.values())


def _component(value: Any, kind: Kind, path: KeyPath, components: Components, issues: list[Issue]):
    label = kind.kind.replace("_", " ")
    if isinstance(value, Component):
        return value
    if isinstance(value, str):
        name, rest, name_path = value, {}, path
    elif isinstance(value, dict):
        rest = dict(value)
        name, name_path = rest.pop("kind", kind.default), path + ("kind",)
        if not isinstance(name, str):
            problem = "missing required key 'kind'" if name is None else f"expected a {label} name, got {name!r}"
            issues.append(Issue(name_path, f"{problem}: which {label} to use (`repa plugins {kind.kind}` lists them)"))
            return value
    else:
        issues.append(Issue(path, f"expected a {label} name or a table with `kind`, got {value!r}"))
        return value
    try:
        entry = components[kind.kind].get(name)
    except UnknownComponentError as exc:
        issues.append(Issue(name_path, str(exc)))
        return value
    scalar_issues: list[Issue] = []
    _resolve_components(entry.params, rest, path, components, scalar_issues)  # and the components it names
    if scalar_issues:
        issues.extend(scalar_issues)
        return value
    try:
        params = entry.params.model_validate(rest)
    except ValidationError as exc:
        issues.extend(_translate(exc, entry.params, path, owner=f"{label} {entry.name!r}"))
        return value
    scalar_issues = _nonfinite_issues(params, path)
    if scalar_issues:
        issues.extend(scalar_issues)
        return value
    return Component(entry.name, params, entry)


# ============================================================================
# Scalars pydantic would accept but an experiment must not: true as 1, inf and nan
# ============================================================================


def _leaf_types(annotation: Any) -> set:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in args}
    if args:
        return set().union(*(_leaf_types(a) for a in args if a is not Ellipsis))
    return {annotation}


def _boolean_issues(model: type[BaseModel], raw: Any, path: KeyPath) -> list[Issue]:
    """true/false given where the schema wants a number (pydantic would read true as 1)."""
    if not isinstance(raw, dict):
        return []
    issues = []
    for name, info in model.model_fields.items():
        value = raw.get(name)
        leaves = _leaf_types(info.annotation)
        wants_number = bool(leaves & {int, float}) and not leaves & {bool, Any, object}
        given = value if isinstance(value, list) else [value]
        if wants_number and any(isinstance(v, bool) for v in given):
            expected = "an integer" if float not in leaves else "a number"
            issues.append(Issue(path + (name,), f"expected {expected}, got {str(value).lower()}"))
    return issues


def _non_finite(value: Any) -> bool:
    """inf or nan, as a number or as --set text."""
    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _nonfinite_issues(value: Any, path: KeyPath) -> list[Issue]:
    """inf or nan anywhere in validated sections (components are checked when they are built)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [Issue(path, f"must be a finite number, got {value}")]
    if isinstance(value, BaseModel):
        return [i for name in type(value).model_fields for i in _nonfinite_issues(getattr(value, name), path + (name,))]
    if isinstance(value, (list, tuple)):
        return [i for k, v in enumerate(value) for i in _nonfinite_issues(v, path + (k,))]
    if isinstance(value, dict):
        return [i for k, v in value.items() for i in _nonfinite_issues(v, path + (k,))]
    return []


# ============================================================================
# pydantic errors -> one readable line each
# ============================================================================

_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_TYPES = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "tuple_type": "a list", "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        inner, _, _ = _unwrap(info.annotation)
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return model


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_keys(name: str) -> set[str]:
    """The keys a top-level section takes: its model's fields, or its default component's parameters."""
    info = ExperimentConfig.model_fields[name]
    model = _model_at(ExperimentConfig, (name,))
    if model is not None:
        return set(model.model_fields)
    kind = next((m for m in info.metadata if isinstance(m, Kind)), None)
    if kind is None or not kind.default:
        return set()
    try:
        return set(get_components().get(kind.kind, kind.default).params.model_fields)
    except (KeyError, UnknownComponentError):
        return set()


def _owner_elsewhere(key: str, section) -> str:
    """A key put in the wrong section (`train.lr`): name the section that has it."""
    owners = [name for name in ExperimentConfig.model_fields if name != section and key in _section_keys(name)]
    return f"; did you mean {owners[0]}.{key}?" if owners else ""


def _section_named_inside(key: str, value, section) -> str:
    """A section named inside another (`train.optimizer.lr`): name it, with the key when it has it."""
    others = [name for name in ExperimentConfig.model_fields if name != section]
    close = difflib.get_close_matches(key, others, n=1, cutoff=0.6)
    if not close:
        return ""
    inner = next(iter(value)) if isinstance(value, dict) and len(value) == 1 else None
    if inner in _section_keys(close[0]):
        return f"; did you mean {close[0]}.{inner}?"
    return f"; did you mean section [{close[0]}]?"


def _translate(exc: ValidationError, model: type[BaseModel], prefix: KeyPath, owner: str = "") -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        issues.append(Issue(prefix + loc, _message(err, model, prefix + loc, loc, owner)))
    return issues


def _message(err: dict, model: type[BaseModel], path: KeyPath, loc: tuple, owner: str) -> str:
    kind, given = err["type"], err.get("input")
    where = f" of {owner}" if owner else ""
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        choices = list(parent.model_fields) if parent else []
        if len(path) == 1:
            close = difflib.get_close_matches(str(path[0]), choices, n=1, cutoff=0.6)
            hint = f"; did you mean [{close[0]}]?" if close else f"; the sections are {', '.join(choices)}"
            return f"unknown section [{path[0]}]{hint}"
        hint = (_owner_elsewhere(str(loc[-1]), path[0]) or _suggest(str(loc[-1]), choices)
                or _section_named_inside(str(loc[-1]), given, path[0]))
        return f"unknown key {loc[-1]!r}{where}{hint}"
    if kind == "missing":
        return f"missing required {'section' if len(path) == 1 else 'key'}{where}"
    if kind in _BOUNDS and _non_finite(given):  # nan fails every bound: say what is wrong with it
        return f"must be a finite number, got {given}"
    if kind in _BOUNDS:
        bound = next(iter(err.get("ctx", {}).values()), "?")
        shown = given if isinstance(given, str) else repr(given)  # it parsed as a number: --set text
        return f"must be {_BOUNDS[kind]} {bound}, got {shown}"
    if kind in _TYPES:
        return f"expected {_TYPES[kind]}, got {given!r}"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}, got {given!r}"
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(given, dict):  # a check across keys: the message names them; the table adds nothing
        return f"{message[0].lower()}{message[1:]}" if message else "invalid table"
    return f"{message[0].lower()}{message[1:]}, got {given!r}" if message else f"invalid value {given!r}"
