"""A dynamic_task_group's generated specs -> a planned body, the same way on both engines.

Specs a template gives (`tasks: "{{ plan }}"`) are data, rendered once already: their text is
used as it is, never rendered again, so a value that reached a spec (an input of
`{{ run.id }}`, a web page an LLM quoted) stays that text. `literal_specs` writes every `{{`,
`{%` and `{#` in them as a placeholder giving that text back, so the generated tasks render,
on either engine, to exactly what was generated. A spec's `condition` is the exception: it
is an expression, evaluated as written. Specs written in the file (`tasks:` as a list) are
the pipeline's own and are rendered like any task.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import PipelineValidationError, TaskError
from orchestrator.plan import Body, find_cycle, plan_tasks
from orchestrator.runtime.leaf import render
from orchestrator.runtime.scope import Scope
from orchestrator.spec.models import DynamicTaskGroup, LLMTask, Task, TaskBase
from orchestrator.spec.output_schema import schema_problem
from orchestrator.spec.yaml_source import SourceMap


@functools.cache
def _task_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Task)


def validate_spec(spec: Any, index: int) -> TaskBase:
    """One generated spec as a task model; an invalid one is an `InvalidTaskSpec` task error."""
    try:
        task: TaskBase = _task_adapter().validate_python(spec)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise TaskError("InvalidTaskSpec", f"generated task {index}: {problems}") from None
    if isinstance(task, LLMTask) and task.output_schema is not None:
        if isinstance(task.output_schema, str):
            raise TaskError(
                "InvalidTaskSpec",
                f"generated task {index}: output_schema must be the schema itself, not a file name "
                "(a generated task has no file to name it relative to)",
            )
        problem = schema_problem(task.output_schema)
        if problem is not None:
            inside = "".join(f"[{part!r}]" for part in problem[0])
            raise TaskError("InvalidTaskSpec", f"generated task {index}: output_schema{inside}: {problem[1]}")
    return task


def plan_generated(specs: Any, group: DynamicTaskGroup, source: SourceMap) -> Body:
    """Validate and plan generated specs; with `parallel: false` each waits for the one before."""
    if not isinstance(specs, list):
        raise TaskError(
            "InvalidTaskSpec",
            f"tasks must give a list of task specs, got {type(specs).__name__}",
        )
    parsed = [validate_spec(spec, index) for index, spec in enumerate(specs)]
    try:
        body = plan_tasks(parsed, source)
    except PipelineValidationError as error:
        message = "; ".join(d.message for d in error.diagnostics)
        raise TaskError("InvalidTaskSpec", message) from None
    if not group.parallel:
        for previous, current in itertools.pairwise(list(body.nodes)):
            body.nodes[current].dependencies.add(previous)
        cycle = find_cycle(body)
        if cycle:
            raise TaskError(
                "InvalidTaskSpec",
                "generated tasks run in list order (parallel: false), but they read each other in a cycle: "
                + " -> ".join(cycle),
            )
    return body


_TEMPLATE_MARK = re.compile(r"\{[{%#]")


def _literal_text(text: str) -> str:
    """`text` as a template that renders to `text` (in a script too: the placeholders give
    their text back inside a string literal)."""
    return _TEMPLATE_MARK.sub(lambda mark: "{{ '" + mark.group() + "' }}", text)


def literal_specs(value: Any) -> Any:
    """Generated specs with their text kept from a second rendering (see the module
    docstring); `condition`s are left as written."""
    if isinstance(value, str):
        return _literal_text(value)
    if isinstance(value, list):
        return [literal_specs(item) for item in value]
    if isinstance(value, dict):
        return {key: item if key == "condition" else literal_specs(item) for key, item in value.items()}
    return value


def expand(group: DynamicTaskGroup, scope: Scope, source: SourceMap) -> Body:
    """A dynamic_task_group's tasks, rendered once (a template) or as written, validated and
    planned."""
    specs = literal_specs(render(group.tasks, scope)) if isinstance(group.tasks, str) else group.tasks
    return plan_generated(specs, group, source)
