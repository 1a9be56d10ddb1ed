"""The values an input of each declared type accepts: what `-i` text, `--inputs-file` values,
API bodies and `default`s are turned into, or an `InputError` that says what was expected."""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.errors import InputError
from orchestrator.spec.models import InputVariable


def yaml_scalar(raw: str) -> Any:
    """Command-line text as the YAML scalar it spells (`3`, `yes`, `[1, 2]`), else as it is."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def coerce(name: str, value: Any, spec: InputVariable, *, from_text: bool) -> Any:
    """Value of input `name` as its declared type; raw command-line text is parsed as YAML first."""
    kind = spec.type
    if kind == "string":
        if from_text:
            return value
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"input '{name}' must be a string, got {type(value).__name__} {value!r}")
    parsed = yaml_scalar(value) if from_text and isinstance(value, str) else value
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
    raise InputError(f"input '{name}' must be {_article(kind)}, got {value!r}")


def _article(kind: str) -> str:
    return {
        "integer": "an integer",
        "array": "an array (like [1, 2])",
        "object": "an object (like {a: 1})",
    }.get(kind, f"a {kind}")
