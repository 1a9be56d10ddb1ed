"""The values an input of each declared type accepts: what `-i` text, `--inputs-file` values,
API bodies and `default`s are turned into, or an `InputError` that says what was expected.

`json_input` makes any input value the JSON value both engines see (runtime.inputs says what
that means); the compiler calls it too, for the values it writes into a state machine."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from orchestrator.errors import InputError, PipelineValidationError
from orchestrator.spec.models import InputVariable
from orchestrator.spec.yaml_source import MAX_INT_DIGITS, MAX_NESTING, YamlSyntaxError, load_yaml

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INT_LIMIT = 10**MAX_INT_DIGITS


def yaml_scalar(raw: str, name: str = "") -> Any:
    """Command-line text as the YAML value it spells (`3`, `yes`, `[1, 2]`), else as it is;
    YAML past the reader's limits (spec.yaml_source) is an `InputError` for input `name`."""
    if not raw.strip():
        return raw
    try:
        return load_yaml(raw, f"-i {name}")[0]
    except YamlSyntaxError:
        return raw
    except PipelineValidationError as error:
        problem = error.diagnostics[0].message
        raise InputError(f"input '{name}' (-i {name}=...): {problem}") from None


def shown_value(
    value: Any, spec: InputVariable | None, sensitive: bool = False, *, typed: bool = False
) -> str:
    """How an error message shows a given value (`typed`: after its type's name): never a
    sensitive one, and a long one cut short."""
    if sensitive or (spec is not None and spec.sensitive):
        return f"a {type(value).__name__} (not shown: the input is sensitive)"
    text = repr(value)
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(value).__name__} {text}" if typed else text


def coerce(name: str, value: Any, spec: InputVariable, *, from_text: bool, sensitive: bool = False) -> Any:
    """Value of input `name` as its declared type; raw command-line text is parsed as YAML first.
    `sensitive` (or the spec's own `sensitive`) keeps the value out of the error message."""
    kind = spec.type
    if kind == "string":
        if from_text:
            return value
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise InputError(
            f"input '{name}' must be a string, got {shown_value(value, spec, sensitive, typed=True)}"
        )
    parsed = yaml_scalar(value, name) if from_text and isinstance(value, str) else value
    if kind == "boolean" and isinstance(parsed, bool):
        return parsed
    if kind == "integer":
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            return parsed
        if isinstance(parsed, float) and parsed.is_integer():
            return int(parsed)
    if kind in {"float", "number"} and isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return float(parsed) if kind == "float" else parsed
    if kind == "array" and isinstance(parsed, list):
        return parsed
    if kind == "object" and isinstance(parsed, dict):
        return parsed
    raise InputError(f"input '{name}' must be {_article(kind)}, got {shown_value(value, spec, sensitive)}")


def _article(kind: str) -> str:
    return {
        "integer": "an integer",
        "array": "an array (like [1, 2])",
        "object": "an object (like {a: 1})",
    }.get(kind, f"a {kind}")


class _NotJson(Exception):
    def __init__(self, problem: str, where: tuple[str | int, ...]) -> None:
        self.problem = problem
        self.where = where


def json_input(name: str, value: Any, *, sensitive: bool = False) -> Any:
    """Input `name`'s value as the JSON value the run sees (see the module docstring), or an
    `InputError`; for a sensitive input the message names no key or element of the value."""
    try:
        return _as_json(value, 0, ())
    except _NotJson as error:
        place = "".join(f"[{part!r}]" for part in error.where)
        at = f" at {place}" if place and not sensitive else ""
        raise InputError(f"input '{name}'{at} holds {error.problem}") from None


def _as_json(value: Any, depth: int, where: tuple[str | int, ...]) -> Any:
    if value is None or isinstance(value, bool | str | int | float):
        return _json_scalar(value, where)
    if depth >= MAX_NESTING:
        raise _NotJson(f"values nested deeper than {MAX_NESTING} levels; flatten them", where)
    if isinstance(value, list | tuple):
        return [_as_json(item, depth + 1, (*where, index)) for index, item in enumerate(value)]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            text = _json_key(key, where)
            if text in result:
                raise _NotJson(f"two keys that are the same once written as JSON text ({text!r})", where)
            result[text] = _as_json(item, depth + 1, (*where, text))
        return result
    raise _NotJson(
        f"a {type(value).__name__}, which is not a JSON value: give text, a number, a "
        "boolean, null, a list or a mapping",
        where,
    )


def _json_scalar(value: Any, where: tuple[str | int, ...]) -> Any:
    if isinstance(value, str):
        if not _SURROGATE.search(value):
            return value
        try:  # a surrogate pair spells one character
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise _NotJson(
                "text that is not valid Unicode (half a character: an unpaired \\u escape, or bytes "
                "that are not UTF-8); fix the text's encoding",
                where,
            ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _NotJson("a number JSON cannot hold (.nan or .inf); give a finite number", where)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
        raise _NotJson(f"an integer of more than {MAX_INT_DIGITS:,} digits; write it as a string", where)
    return value


def _json_key(key: Any, where: tuple[str | int, ...]) -> str:
    """A mapping key as JSON writes it (`1` -> "1", `true` -> "true", `null` -> "null")."""
    if isinstance(key, str):
        return str(_json_scalar(key, where))
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(_json_scalar(key, where))
    raise _NotJson(f"a key of type {type(key).__name__}; keys are text", where)
