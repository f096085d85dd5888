"""Pydantic's validation errors in Casewatch's words: the path in the file, what is wrong, the fix.

`describe(errors, root)` turns `ValidationError.errors()` of the model `root` into lines
'path: what is wrong: the fix', e.g. `rules.foo.count: expected a whole number, got 'three'`.
The path is the one a person sees in the file: pydantic's extra steps (the tag of a tagged
union, the member of a plain union, `[key]`) are left out. The error types a config meets are
translated; any other keeps pydantic's own text.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

_EXPECTED = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list, e.g. [a, b]",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}
_RULE_NAME = "^[a-z][a-z0-9_]{0,62}$"


@dataclass(frozen=True)
class _Where:
    path: str  # as written in the file, e.g. rules.foo.count
    annotation: Any  # the type expected there, when known
    model: type[BaseModel] | None  # the section the last key belongs to
    in_union: bool  # pydantic tried one member of a plain union (str | list[str])


def describe(errors: Iterable[ErrorDetails], root: type[BaseModel]) -> list[str]:
    """One line per problem; the members of a plain union that all failed at one place are
    said together ("expected text or a list, got 3")."""
    lines: list[str] = []
    unions: dict[str, tuple[list[str], str]] = {}
    for err in errors:
        where = _locate(root, err["loc"])
        if where.in_union and err["type"] in _EXPECTED:
            expected, got = unions.setdefault(where.path, ([], _shown(err["input"])))
            if not expected:
                lines.append(where.path)  # placeholder, filled in below
            expected.append(_EXPECTED[err["type"]])
            continue
        path = where.path
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += "." + str((err.get("ctx") or {}).get("discriminator", "kind")).strip("'")
        lines.append(f"{path}: {_message(err, where)}")
    for path, (expected, got) in unions.items():
        lines[lines.index(path)] = f"{path}: expected {' or '.join(expected)}, got {got}"
    return lines


def _message(err: ErrorDetails, where: _Where) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_field(str(err["loc"][-1]), where.model)
    if kind == "missing":
        return "required key is missing: add it"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _tag(where, ctx)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    if kind == "literal_error":
        return _literal(where.annotation, value, ctx)
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"expected {words} {ctx.get(key)}, got {_shown(value)}"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"expected at least {n} item{'s' if n != 1 else ''}, got {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == _RULE_NAME:
        return (
            f"{value!r} is not a rule name: use lower case letters, digits and _, starting "
            "with a letter (at most 63)"
        )
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} does not fit the pattern {ctx.get('pattern')}: rename it"
    return str(err["msg"]).removeprefix("Value error, ")


def _unknown_field(key: str, model: type[BaseModel] | None) -> str:
    known = _keys(model) if model else []
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown field {key!r}: did you mean {close[0]!r}?"
    if known:
        return f"unknown field {key!r}: remove it (known: {', '.join(known)})"
    return f"unknown field {key!r}: remove it or check its spelling"


def _tag(where: _Where, ctx: dict[str, Any]) -> str:
    members = _members(where.annotation) or ()
    known = sorted({t for m in members for t in _tags(m)}) or sorted(
        re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
    )
    noun = "rule kind" if where.path.startswith("rules.") else "kind"
    if "tag" not in ctx:
        return f"required key is missing: add it ({noun}s: {', '.join(known) or '?'})"
    close = difflib.get_close_matches(str(ctx["tag"]), known, n=1)
    if close:
        return (
            f"unknown {noun} {ctx['tag']!r}: did you mean {close[0]!r}? (known: {', '.join(known)})"
        )
    return f"unknown {noun} {ctx['tag']!r}: use one of {', '.join(known)}"


def _literal(annotation: Any, value: Any, ctx: dict[str, Any]) -> str:
    if get_origin(annotation) is Literal:
        known = [str(v) for v in get_args(annotation)]
    else:
        known = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [str(ctx.get("expected"))]
    if len(known) == 1:
        return f"expected {known[0]}, got {_shown(value)}"
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"expected one of {', '.join(known)}, got {_shown(value)}{hint}"


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _locate(root: type[BaseModel], loc: Sequence[int | str]) -> _Where:
    """Follow `loc` through the model's annotations: the path as written, and what is there."""
    shown: list[str] = []
    current: Any = root
    model: type[BaseModel] | None = None
    in_union = False
    for part in loc:
        if str(part).startswith("function-"):
            continue
        current = _unwrap(current)
        members = _members(current)
        if members is not None:
            tags = {t: m for m in members for t in _tags(m)}
            if part in tags:  # the tag of a tagged union: not a key in the file
                current = tags[part]
                continue
            if not isinstance(part, int) and part not in _member_keys(members):
                in_union, current = True, None  # which member failed: pydantic's name of it
                continue
            current = next((m for m in members if _is_model(m)), None)
        if part == "[key]":
            current = None
            continue
        in_union = False
        shown.append(str(part))
        if _is_model(current):
            model = current
            field = _field(current, str(part))
            current = field.annotation if field else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            current = None
    return _Where(".".join(shown) or "(top level)", _unwrap(current), model, in_union)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    members = _members(annotation)
    if members is not None:
        rest = [m for m in members if m is not type(None)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return annotation


def _members(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(_unwrap(m) for m in get_args(annotation))
    return None


def _tags(member: Any) -> list[str]:
    field = member.model_fields.get("kind") if _is_model(member) else None
    if field is not None and get_origin(field.annotation) is Literal:
        return [str(v) for v in get_args(field.annotation)]
    return []


def _member_keys(members: tuple[Any, ...]) -> set[str]:
    return {k for m in members if _is_model(m) for k in _keys(m) + list(m.model_fields)}


def _field(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
