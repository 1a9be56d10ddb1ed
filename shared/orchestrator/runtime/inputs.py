"""Run inputs: parse `-i k=v`, coerce to declared types, apply defaults, options and sanitization."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any

from orchestrator.errors import InputError
from orchestrator.spec.input_types import coerce, yaml_scalar
from orchestrator.spec.models import Pipeline

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def parse_assignment(text: str) -> tuple[str, str]:
    """`key=value` -> (key, raw value text)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise InputError(f"-i {text!r}: write inputs as -i name=value")
    return key.strip(), value


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
                resolved[name] = yaml_scalar(value) if name in text_keys else value
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
