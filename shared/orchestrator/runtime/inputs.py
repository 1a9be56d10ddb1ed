"""Run inputs: parse `-i k=v`, coerce to declared types, apply defaults, options and sanitization."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any

import yaml

from orchestrator.errors import InputError
from orchestrator.spec.models import InputVariable, Pipeline

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def parse_assignment(text: str) -> tuple[str, str]:
    """`key=value` -> (key, raw value text)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise InputError(f"-i {text!r}: write inputs as -i name=value")
    return key.strip(), value


def _yaml_scalar(raw: str) -> Any:
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
    parsed = _yaml_scalar(value) if from_text and isinstance(value, str) else value
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


def _sanitize(value: Any) -> Any:
    if isinstance(value, str):
        return _CONTROL.sub("", value.strip())
    if isinstance(value, list):
        return [_sanitize(item) for item in value]
    if isinstance(value, dict):
        return {key: _sanitize(item) for key, item in value.items()}
    return value


def _did_you_mean(name: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unused_input_warnings(pipeline: Pipeline, given: Collection[str], used: Collection[str]) -> list[str]:
    """A warning for each given input the pipeline neither declares nor reads (`used`: the
    undeclared names its templates read), most likely a misspelt name. Under strict_mode
    `resolve_inputs` rejects them instead."""
    if pipeline.input_validation.strict_mode:
        return []
    declared = pipeline.input_variables
    return [
        f"input '{name}' is not declared and nothing in the pipeline reads it"
        f"{_did_you_mean(name, [*declared, *used])}"
        for name in given
        if name not in declared and name not in used
    ]


def resolve_inputs(
    pipeline: Pipeline, given: dict[str, Any], *, text_keys: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Every input the run sees, or an `InputError` naming each problem and its fix.

    `text_keys` are the inputs that came from `-i k=v` text and must be parsed as YAML scalars.
    """
    problems: list[str] = []
    resolved: dict[str, Any] = {}
    declared = pipeline.input_variables
    for name, value in given.items():
        spec = declared.get(name)
        if spec is None:
            if pipeline.input_validation.strict_mode:
                names = ", ".join(declared) or "none"
                problems.append(
                    f"input '{name}' is not declared{_did_you_mean(name, declared)} "
                    f"(strict_mode is on; declared: {names})"
                )
            else:
                resolved[name] = _yaml_scalar(value) if name in text_keys else value
            continue
        try:
            resolved[name] = coerce(name, value, spec, from_text=name in text_keys)
        except InputError as error:
            problems.append(str(error))
    for name, spec in declared.items():
        if name in resolved or name in given:
            continue
        if spec.default is not None:
            resolved[name] = spec.default
        elif spec.required and not spec.options:
            problems.append(f"input '{name}' is required: pass -i {name}=...")
        elif spec.required:
            choices = ", ".join(map(str, spec.options or []))
            problems.append(f"input '{name}' is required: pass -i {name}=... (one of: {choices})")
        else:
            resolved[name] = None
    if pipeline.input_validation.sanitization:
        resolved = {name: _sanitize(value) for name, value in resolved.items()}
    for name, spec in declared.items():
        value = resolved.get(name)
        if spec.options and value is not None and value not in spec.options:
            choices = ", ".join(map(str, spec.options))
            problems.append(f"input '{name}' is {resolved[name]!r}, not one of: {choices}")
    if problems:
        raise InputError("; ".join(problems))
    return resolved
