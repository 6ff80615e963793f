"""Parsing of values typed by people (config files, environment, CLI specs): one set of rules."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from functools import cache

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off, any case; anything else is a ValueError (a typo such as
    'flase' must not silently mean False)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")


def optional_base(hint) -> tuple[object, bool]:
    """(X, True) for `X | None`, (hint, False) otherwise."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def coerce(value, hint, name: str):
    """A value typed by a person (config file, environment, CLI, spec string) -> the field's type.

    One rule everywhere: a bool field takes a bool or parse_bool text; an int field takes an
    int or integer text, never a bool or a float (`d_sae: 1.9` is an error, not 1); a float
    field takes a number or number text, never a bool; `X | None` also takes None, '' or
    'none'; `tuple[str, ...]` takes a list or ';'-separated text."""
    base, optional = optional_base(hint)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
        return None
    if typing.get_origin(base) is tuple:
        items = [v for v in value.split(";") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(v.strip() for v in items)
    text = value.strip() if isinstance(value, str) else None
    try:
        if base is bool:
            return value if isinstance(value, bool) else parse_bool(text)
        if isinstance(value, bool):
            raise ValueError("a boolean")
        if base is int:
            return value if isinstance(value, int) else int(text)
        if base is float:
            return float(value) if isinstance(value, int | float) else float(text)
        if base is str and isinstance(value, str):
            return value
    except (AttributeError, TypeError, ValueError) as e:  # AttributeError: parse_bool of a non-str
        raise ValueError(f"{name}: {value!r} is not a valid {getattr(base, '__name__', base)}") from e
    raise ValueError(f"{name}: {value!r} is not a valid {getattr(base, '__name__', base)}")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases, read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for prev, node in zip(body, body[1:], strict=False):
            if (isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                docs[prev.target.id] = node.value.value.strip()
    return docs
