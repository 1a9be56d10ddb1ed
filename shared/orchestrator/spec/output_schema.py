"""An `llm_task`'s `output_schema`: read from its file, checked as JSON Schema, and the check
of a value against it, for `validate` and for both engines.

A string `output_schema` is the path of a JSON or YAML file, relative to the pipeline file;
`inline_output_schemas` reads it (within `spec.files`' limits) when the pipeline is loaded and
puts the schema itself in its place, so the engines, the cache key and the Lambda functions
only ever see a mapping. The dialect is the one the schema's `$schema` names (drafts 4, 6, 7,
2019-09 and 2020-12), 2020-12 when it names none. References are resolved inside the schema
only: nothing is ever fetched from the network.

`jsonschema` is imported only when a pipeline has a schema: most never do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Diagnostic, PipelineValidationError
from orchestrator.spec.files import UnreadableFile, read_text, shown
from orchestrator.spec.models import LLMTask, Pipeline, TaskBase
from orchestrator.spec.yaml_source import Location, SourceMap, format_location, load_yaml

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = ["inline_output_schemas", "schema_problem", "validation_problem"]

DEFAULT_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_OUTPUT_TYPES_ALLOWED = ("json",)
_SHOWN = 300


def _validator_class(schema: dict[str, Any]) -> type[Validator] | None:
    """The validator of the schema's dialect; None when its `$schema` names none we know."""
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    if "$schema" not in schema:
        return Draft202012Validator  # type: ignore[no-any-return]
    found: type[Validator] | None = validator_for(schema, default=None)
    return found


def schema_problem(schema: Any) -> tuple[Location, str] | None:
    """Where in `schema` (a path of keys) it is not a valid JSON Schema, and why; None if it is."""
    if not isinstance(schema, dict):
        return (), f"a JSON Schema is a mapping (like {{type: object, properties: ...}}), got {_kind(schema)}"
    from jsonschema.exceptions import SchemaError

    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        return ("$schema",), f"$schema must be the URI of a JSON Schema dialect, got {dialect!r}"
    validator = _validator_class(schema)
    if validator is None:
        return ("$schema",), (
            f"unknown JSON Schema dialect {dialect!r}: leave $schema out (2020-12) or name a draft, "
            f"like {DEFAULT_DIALECT!r} or 'http://json-schema.org/draft-07/schema#'"
        )
    try:
        validator.check_schema(schema)
    except SchemaError as error:
        where = tuple(error.path)
        hint = _type_hint(error.instance) if where and where[-1] == "type" else ""
        return where, f"not a valid JSON Schema: {_short(error.message)}{hint}"
    return None


_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _type_hint(given: Any) -> str:
    close = difflib.get_close_matches(given, _TYPES, n=1) if isinstance(given, str) else []
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    return f"; {suggestion}a type is one of {', '.join(_TYPES)} (or a list of them)"


def validation_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """Why `value` does not match `schema` (the clearest of its errors, with where), or None."""
    from jsonschema.exceptions import best_match
    from referencing.exceptions import Unresolvable

    validator = _validator_class(schema)
    if validator is None:  # refused by `validate`; a generated task's schema is checked too
        return "the output_schema names an unknown $schema"
    try:
        error = best_match(validator(schema).iter_errors(value))
    except Unresolvable as unresolvable:
        return f"the output_schema's $ref cannot be resolved ({unresolvable}): point it inside the schema"
    if error is None:
        return None
    return f"at {error.json_path}: {_short(error.message)}"


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _kind(value: Any) -> str:
    return {str: "a string", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _llm_tasks(tasks: list[Any], location: Location) -> Iterator[tuple[LLMTask, Location]]:
    """Every llm_task written in the file, with where, in containers and fallbacks too."""
    for index, task in enumerate(tasks):
        if isinstance(task, TaskBase):  # not a dynamic_task_group's specs: checked when generated
            yield from _llm_tasks_of(task, (*location, index))


def _llm_tasks_of(task: TaskBase, here: Location) -> Iterator[tuple[LLMTask, Location]]:
    if isinstance(task, LLMTask):
        yield task, here
    inner = getattr(task, "tasks", None)
    if isinstance(inner, list):
        yield from _llm_tasks(inner, (*here, "tasks"))
    fallback = task.error_handling.fallback if task.error_handling else None
    if fallback is not None:
        yield from _llm_tasks_of(fallback, (*here, "error_handling", "fallback"))


def _read_schema_file(name: str, path: Path, source: SourceMap, at: Location) -> Any:
    """The schema a task names by file; raises `PipelineValidationError` located in either file."""
    file = path.parent / name
    field = (*at, "output_schema")
    try:
        text = read_text(file)
    except UnreadableFile as error:
        raise PipelineValidationError(
            [source.diagnostic(field, f"output_schema file {shown(file)} cannot be used: {error}")]
        ) from None
    if text is None:
        raise PipelineValidationError(
            [
                source.diagnostic(
                    field,
                    f"output_schema names {shown(file)}, which does not exist: give the path of a "
                    "JSON or YAML file relative to the pipeline file, or write the schema inline",
                )
            ]
        )
    try:
        schema, schema_source = load_yaml(text, shown(file))
    except PipelineValidationError as error:
        raise PipelineValidationError(
            [
                replace(diagnostic, message=f"output_schema file is not JSON or YAML: {diagnostic.message}")
                for diagnostic in error.diagnostics
            ]
        ) from None
    problem = schema_problem(schema)
    if problem is not None:
        inside, message = problem
        raise PipelineValidationError(
            [schema_source.diagnostic(inside, f"{message} (the output_schema of '{format_location(at)}')")]
        )
    return schema


def inline_output_schemas(pipeline: Pipeline, source: SourceMap, path: Path) -> None:
    """Check every llm_task's output_schema, reading those named by file into the task.

    Raises `PipelineValidationError` with every problem: a file that is missing or not
    JSON/YAML, a schema that is not valid JSON Schema, an `output_type` other than `json`
    beside it, `schema_retries` without it. Each names the file and line, and how to fix it.
    """
    problems: list[Diagnostic] = []
    for task, at in _llm_tasks(pipeline.tasks, ("tasks",)):
        if task.output_schema is None:
            if "schema_retries" in task.model_fields_set:
                problems.append(
                    source.diagnostic(
                        (*at, "schema_retries"),
                        "schema_retries applies only to a task with an output_schema: add one, "
                        "or remove schema_retries (error_handling.retry_count retries the task)",
                        key=True,
                    )
                )
            continue
        if "output_type" in task.model_fields_set and task.output_type not in _OUTPUT_TYPES_ALLOWED:
            problems.append(
                source.diagnostic(
                    (*at, "output_type"),
                    f"output_type: {task.output_type} contradicts output_schema, which makes the "
                    "output the JSON value the schema describes: remove output_type (or write json)",
                )
            )
        if isinstance(task.output_schema, str):
            try:
                task.output_schema = _read_schema_file(task.output_schema, path, source, at)
            except PipelineValidationError as error:
                problems.extend(error.diagnostics)
            continue
        problem = schema_problem(task.output_schema)
        if problem is not None:
            inside, message = problem
            problems.append(source.diagnostic((*at, "output_schema", *inside), message))
    if problems:
        raise PipelineValidationError(sorted(problems, key=lambda d: (d.file, d.line, d.column)))
