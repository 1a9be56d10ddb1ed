"""Run inputs: read `-i k=v` and `--inputs-file`, coerce to declared types, apply defaults,
options and sanitization, and make every value the JSON value both engines see.

Whatever the source (command line, inputs file, API body, a child pipeline's rendered
inputs), a run's inputs are JSON: mapping keys are text (`{1: a}` gives `{"1": "a"}`, as
on AWS, where inputs travel as JSON), text is valid Unicode, numbers are finite and of at most
4,300 digits, nesting is at most `MAX_NESTING` deep; anything else is an `InputError` that
names the input and the fix (`json_input`, kept in spec.input_types, where the compiler
reads it too). No error message shows a sensitive input's value.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, PipelineValidationError
from orchestrator.spec.files import UnreadableFile, read_text, shown
from orchestrator.spec.input_types import coerce, json_input, shown_value, yaml_scalar
from orchestrator.spec.models import Pipeline
from orchestrator.spec.yaml_source import MAX_INT_DIGITS, MAX_NESTING, load_yaml

__all__ = ["json_document", "json_input", "parse_assignment", "read_inputs_file", "resolve_inputs"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def parse_assignment(text: str) -> tuple[str, str]:
    """`key=value` -> (key, raw value text). The error never shows the text: it may be a
    secret given without its name."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise InputError(
            "an -i argument is not name=value (not shown, in case it is a secret): write -i name=value"
        )
    return key.strip(), value


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(
            f"an integer of {len(text.lstrip('-')):,} digits (at most {MAX_INT_DIGITS:,}); "
            "write it as a string"
        )
    return int(text)


def json_document(text: str) -> Any:
    """JSON text (an inputs file, an API body) as a value; `json.JSONDecodeError` when it is
    not JSON, an `InputError` when it is JSON past the limits (an integer of more than 4,300
    digits, values nested too deeply for the parser)."""
    try:
        return json.loads(text, parse_int=_json_int)
    except RecursionError:
        raise InputError(f"values nested deeper than {MAX_NESTING} levels; flatten them") from None


def read_inputs_file(path: Path) -> dict[str, Any]:
    """The inputs a `--inputs-file` gives: a JSON object (read as JSON: `1e5` is a number and
    `"\\ud83d\\ude00"` one character) or a YAML mapping (spec.yaml_source's limits)."""
    where = f"--inputs-file {shown(path)}"
    try:
        text = read_text(path)
    except UnreadableFile as error:
        raise InputError(f"{where}: {error}") from None
    if text is None:
        raise InputError(f"{where}: no such file; check the path")
    try:
        loaded = json_document(text)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    except ValueError:  # not JSON: YAML then
        try:
            loaded, _ = load_yaml(text, shown(path))
        except PipelineValidationError as error:
            problems = "; ".join(f"line {d.line}, column {d.column}: {d.message}" for d in error.diagnostics)
            raise InputError(f"{where}: {problems}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{where}: must be a mapping of name: value")
    return loaded


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
    sensitive = pipeline.sensitive_inputs()
    for name, value in given.items():
        try:
            resolved[name] = _given_value(pipeline, name, value, name in text_keys, name in sensitive)
        except InputError as error:
            problems.append(str(error))
    for name, spec in declared.items():
        if name in resolved or name in given:
            continue
        if spec.default is not None:
            try:
                resolved[name] = json_input(name, spec.default, sensitive=name in sensitive)
            except InputError as error:
                problems.append(f"the default of {error}")
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
            problems.append(
                f"input '{name}' is {shown_value(value, spec, name in sensitive)}, not one of: {choices}"
            )
    if problems:
        raise InputError("; ".join(problems))
    return resolved


def _given_value(pipeline: Pipeline, name: Any, value: Any, from_text: bool, sensitive: bool) -> Any:
    """One given input's value, coerced to its declared type (parsed as YAML when `from_text`)."""
    if not isinstance(name, str) or _SURROGATE.search(name):
        raise InputError(f"an input name must be text, got {name!r}")
    declared = pipeline.input_variables
    spec = declared.get(name)
    if spec is None:
        if pipeline.input_validation.strict_mode:
            names = ", ".join(declared) or "none"
            raise InputError(
                f"input '{name}' is not declared{_did_you_mean(name, declared)} "
                f"(strict_mode is on; declared: {names})"
            )
        value = yaml_scalar(value, name) if from_text else value
    else:
        value = coerce(name, value, spec, from_text=from_text, sensitive=sensitive)
    return json_input(name, value, sensitive=sensitive)
