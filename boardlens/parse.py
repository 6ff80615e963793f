"""Parsing of values typed by people (config files, environment, CLI specs): one set of rules."""

from __future__ import annotations

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
