"""Reading the files users give us: every problem is one `BadFile` line naming the file.

JSON, torch and safetensors files come from users, other libraries and the network: each
reader here turns whatever goes wrong (missing, not a file, truncated, the wrong shape of
JSON, a pickle holding Python objects) into `BadFile("<path>: <what is wrong>")`, a
ValueError the commands print as their one error line. Torch files are read weights-only
(nothing in a pickle runs), and a refused one never repeats torch's advice to load it
unrestricted. `check` validates a JSON object's fields against a small schema before any of
them is used.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

_MAX_DETAIL = 600  # a model config in a message is ~300 characters


class BadFile(ValueError):
    """A file that cannot be used; str() is one line: '<path>: <problem>' (or a whole message
    of that form given alone, as subclasses such as lm's CheckpointError are raised)."""

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        if problem is None:
            path, _, problem = str(path).partition(": ")
        self.path, self.problem = Path(path), _one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL - 3] + "..."


def _opened(path: Path, e: OSError, error: type[BadFile]) -> BadFile:
    if isinstance(e, FileNotFoundError):
        return error(path, "not found")
    if isinstance(e, IsADirectoryError):
        return error(path, "a folder, not a file")
    if isinstance(e, NotADirectoryError):
        return error(path, "a file, not a folder")
    return error(path, f"cannot be read ({e.strerror or e})")


def read_json(path: str | Path, what: str = "JSON object", kind: type = dict, error: type[BadFile] = BadFile) -> Any:
    """The parsed file, which must be of `kind` (dict: an object; list: an array). `error`: the
    BadFile subclass raised (e.g. lm's CheckpointError), as for every reader here."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise _opened(path, e, error) from None
    except UnicodeDecodeError:
        raise error(path, "not UTF-8 text, so not JSON") from None
    except json.JSONDecodeError as e:
        raise error(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise error(path, "JSON nested too deeply") from None
    if not isinstance(data, kind):
        raise error(path, f"a {what} must be a JSON {'object' if kind is dict else 'array'}, got {_json_type(data)}")
    return data


def load_torch(path: str | Path, what: str = "torch file", error: type[BadFile] = BadFile) -> Any:
    """torch.load restricted to tensors and plain containers: no code in a pickle runs."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise _opened(path, e, error) from None
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():  # a global refused; torch's text advises loading it
            # unrestricted, which a user must not do with a file they do not trust
            raise error(path, f"not a {what}: it holds Python objects, not only tensors "
                              "(refused without running them)") from None
        raise error(path, f"not a readable {what} (truncated, or not a torch file)") from None
    except Exception:  # noqa: BLE001 - a truncated zip, a random file, a torch version's own errors
        raise error(path, f"not a readable {what} (truncated, or not a torch file)") from None


def load_safetensors(path: str | Path, error: type[BadFile] = BadFile) -> dict:
    """A safetensors file's tensors (its header is bounded by the library before allocation)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except OSError as e:
        raise _opened(path, e, error) from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for bad headers and data
        raise error(path, f"not a readable safetensors file ({e})") from None


# --- schemas ------------------------------------------------------------------------------
Rule = Callable[[Any], str | None]
"""A field's check: None when the value is fine, else what is wrong with it."""


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def integer(lo: int, hi: int) -> Rule:
    """An int (not a bool) in [lo, hi]."""
    def rule(v):
        if type(v) is not int or not lo <= v <= hi:
            return f"must be an integer in [{lo}, {hi}], got {_short(v)}"
        return None
    return rule


def number(lo: float, hi: float, above: bool = False) -> Rule:
    """A finite number in [lo, hi] (above: strictly above lo)."""
    def rule(v):
        if type(v) not in (int, float) or not (lo < v if above else lo <= v) or not v <= hi:
            return f"must be a number in {'(' if above else '['}{lo}, {hi}], got {_short(v)}"
        return None
    return rule


def text(choices: Collection[str] | Callable[[], Collection[str]] | None = None) -> Rule:
    """A string; one of `choices` when given (a callable: looked up at check time, e.g. a registry)."""
    def rule(v):
        if type(v) is not str:
            return f"must be a string, got {_json_type(v)}"
        allowed = choices() if callable(choices) else choices
        if allowed is not None and v not in allowed:
            return f"{_short(v)} is not one of {', '.join(sorted(allowed))}"
        return None
    return rule


def boolean(v) -> str | None:
    return None if type(v) is bool else f"must be true or false, got {_short(v)}"


def mapping(schema: Mapping[str, Rule] | None = None) -> Rule:
    """An object; its known fields checked by `schema` (unknown ones are left alone)."""
    def rule(v):
        if not isinstance(v, dict):
            return f"must be an object, got {_json_type(v)}"
        return field_problem(v, schema or {})
    return rule


def optional(rule: Rule) -> Rule:
    """The rule, or null."""
    return lambda v: None if v is None else rule(v)


def field_problem(obj: dict, schema: Mapping[str, Rule], required: Collection[str] = ()) -> str | None:
    """The first problem of obj's fields against schema ('<field> <problem>'), or None."""
    for key in required:
        if key not in obj:
            return f"{key} is missing"
    for key, rule in schema.items():
        if key in obj and (problem := rule(obj[key])) is not None:
            return f"{key} {problem}" if not problem.startswith(f"{key}.") else problem
    return None


LAYER = integer(0, 4096)
"""A block index as any model or SAE metadata may name it (real depths are far below)."""
WIDTH = integer(1, 1 << 24)
"""A residual or dictionary width (d_in, d_sae) as metadata may name it."""


def check(obj: dict, schema: Mapping[str, Rule], path: str | Path, required: Collection[str] = (),
          error: type[BadFile] = BadFile) -> dict:
    """obj when its fields pass schema, else BadFile (or `error`) naming path and the first bad field."""
    problem = field_problem(obj, schema, required)
    if problem is not None:
        raise error(path, problem)
    return obj


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
