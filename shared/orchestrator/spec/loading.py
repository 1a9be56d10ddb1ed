"""Read a pipeline file, and the pipelines it includes, into `Pipeline`s; every schema problem
becomes a located diagnostic. The only place that reads pipeline files for planning and
compiling: `plan` and the compilers work on what this gives them."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import BaseModel, ValidationError

from orchestrator.errors import Diagnostic, PipelineValidationError
from orchestrator.spec.files import UnreadableFile, read_text, shown
from orchestrator.spec.models import TASK_TYPES, Pipeline, PipelineGroup, TaskBase
from orchestrator.spec.output_schema import inline_output_schemas
from orchestrator.spec.yaml_source import Location, SourceMap, load_yaml

ChildSource: TypeAlias = "PipelineSource | PipelineValidationError | None"


@dataclass(frozen=True)
class PipelineSource:
    """A parsed pipeline with where it came from."""

    pipeline: Pipeline
    source: SourceMap
    path: Path
    children: dict[Path, ChildSource] = field(default_factory=dict, compare=False, repr=False)
    """Every file it includes through pipeline_groups, directly or not, by resolved path (one
    mapping for the whole tree): its source, why it cannot be used, or None when missing."""

    @property
    def pipeline_id(self) -> str:
        return self.path.stem


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _model_at(data: Any, location: Location) -> type[BaseModel] | None:
    """The model class that parses the mapping at `location` (for key suggestions)."""
    model: type[BaseModel] | None = Pipeline
    current = data
    for part in location:
        if (
            isinstance(current, dict)
            and isinstance(current.get("type"), str)
            and (model is None or issubclass(model, TaskBase) or model is TaskBase)
        ):
            model = TASK_TYPES.get(current["type"], TaskBase)
        current = _step(current, part)
        if isinstance(part, int):
            continue
        if model is None:
            return None
        model.model_rebuild()  # resolves its `Task` references if not yet built (spec.models)
        field = model.model_fields.get(str(part))
        model = _field_model(field.annotation) if field else None
    if isinstance(current, dict) and isinstance(current.get("type"), str):
        return TASK_TYPES.get(current["type"], TaskBase)
    return model


def _field_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        found = _field_model(argument)
        if found is not None:
            return found
    metadata = getattr(annotation, "__metadata__", None)
    if metadata is not None:
        return _field_model(annotation.__origin__)
    if str(annotation).startswith("Task") or "PythonTask" in str(annotation):
        return TaskBase
    return None


def _data_location(data: Any, loc: tuple[int | str, ...]) -> Location:
    """Drop the discriminator tags pydantic inserts (`tasks.0.python_task.script`)."""
    location: list[str | int] = []
    current = data
    for part in loc:
        if location and not isinstance(current, dict | list):
            break  # the rest names union members of a scalar, not places in the file
        if (
            isinstance(current, dict)
            and isinstance(part, str)
            and part not in current
            and (part in TASK_TYPES or not part.isidentifier() or part in {"str", "int", "float", "bool"})
        ):
            continue
        if isinstance(current, list) and isinstance(part, str):
            continue
        location.append(part)
        current = _step(current, part)
    return tuple(location)


def _step(current: Any, part: int | str) -> Any:
    """`current[part]` when it exists, else None."""
    if isinstance(current, dict):
        return current.get(part)
    if isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
        return current[part]
    return None


def _message(error: Any, data: Any, location: Location) -> tuple[str, bool]:
    """Readable message for one pydantic error, and whether it points at a key."""
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(location[-1])
        model = _model_at(data, location[:-1])
        hint = _suggest(key, list(model.model_fields)) if model else ""
        where = "at the top level" if len(location) == 1 else "here"
        return f"unknown key '{key}' {where}{hint}", True
    if kind == "union_tag_invalid":
        tag = str(error["ctx"]["tag"])
        hint = _suggest(tag, list(TASK_TYPES))
        return f"unknown task type '{tag}'{hint} (one of: {', '.join(TASK_TYPES)})", False
    if kind == "union_tag_not_found":
        return f"task needs a 'type' (one of: {', '.join(TASK_TYPES)})", False
    if kind == "missing":
        return f"missing required key '{location[-1]}'", False
    if kind == "string_pattern_mismatch" and location and location[-1] == "name":
        return "task name must match [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscores)", False
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    given = error.get("input")
    if kind not in {"missing", "model_type"} and not isinstance(given, dict | list):
        message += f" (got {given!r})"
    return message, False


def diagnostics_from_validation(error: ValidationError, data: Any, source: SourceMap) -> list[Diagnostic]:
    """Turn pydantic's errors into one diagnostic per location, the first (clearest) kept."""
    found: dict[Location, Diagnostic] = {}
    for item in error.errors():
        location = _data_location(data, item["loc"])
        if location in found:
            continue
        message, at_key = _message(item, data, location)
        found[location] = source.diagnostic(location, message, key=at_key)
    return sorted(found.values(), key=lambda d: (d.line, d.column))


def parse_pipeline(text: str, path: Path) -> PipelineSource:
    """Parse and schema-check pipeline text, reading in the output_schema files it names
    (`spec.output_schema`); raises `PipelineValidationError`."""
    data, source = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise PipelineValidationError(
            [Diagnostic(str(path), 1, 1, "", "a pipeline file must be a mapping with 'name' and 'tasks'")]
        )
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as error:
        raise PipelineValidationError(diagnostics_from_validation(error, data, source)) from None
    inline_output_schemas(pipeline, source, path)
    return PipelineSource(pipeline, source, path)


def missing_file(path: Path) -> PipelineValidationError:
    """The error of a pipeline file that is not there."""
    return PipelineValidationError([Diagnostic(str(path), 1, 1, "", "no such file; check the path")])


def _read_file(path: Path) -> PipelineSource | None:
    """The parsed file, or None when there is no such file."""
    try:
        text = read_text(path)
    except UnreadableFile as error:
        raise PipelineValidationError([Diagnostic(shown(path), 1, 1, "", f"cannot read: {error}")]) from None
    return None if text is None else parse_pipeline(text, path)


def included_paths(pipeline: Pipeline, path: Path) -> Iterator[Path]:
    """The resolved paths of the child pipelines its pipeline_groups name, at any depth."""
    pending: list[TaskBase] = list(pipeline.tasks)
    while pending:
        task = pending.pop()
        if isinstance(task, PipelineGroup):
            yield from ((path.parent / child.pipeline).resolve() for child in task.pipelines)
        inner = getattr(task, "tasks", None)
        if isinstance(inner, list):
            pending.extend(item for item in inner if isinstance(item, TaskBase))
        fallback = task.error_handling.fallback if task.error_handling else None
        if fallback is not None:
            pending.append(fallback)


def read_pipeline(path: Path) -> PipelineSource:
    """Read and schema-check a pipeline file and every pipeline it includes (`children`); a
    missing file is a diagnostic too. A child that is missing or invalid is recorded, not
    raised: validating the parent reports it where the parent names it."""
    root = _read_file(path)
    if root is None:
        raise missing_file(path)
    children = root.children
    pending = list(included_paths(root.pipeline, path))
    while pending:
        child = pending.pop()
        if child in children or child == path.resolve():
            continue
        try:
            found = _read_file(child)
        except PipelineValidationError as error:
            children[child] = error
            continue
        if found is None:
            children[child] = None
            continue
        grandchildren = list(included_paths(found.pipeline, child))
        if found.pipeline.budget is not None and grandchildren:
            children[child] = PipelineValidationError([found.source.diagnostic(("budget",), _NESTED_BUDGET)])
            continue
        children[child] = PipelineSource(found.pipeline, found.source, found.path, children)
        pending.extend(grandchildren)
    return root


_NESTED_BUDGET = (
    "a child pipeline's budget cannot cover the pipelines it includes in turn (their tasks only "
    "know the top pipeline and their own): put `budget:` in those files, or on the top pipeline"
)
