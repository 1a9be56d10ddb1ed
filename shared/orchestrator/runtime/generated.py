"""A dynamic_task_group's generated specs -> a planned body, the same way on both engines."""

from __future__ import annotations

import functools
import itertools
from typing import Any

from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import PipelineValidationError, TaskError
from orchestrator.plan import Body, find_cycle, plan_tasks
from orchestrator.runtime.leaf import render
from orchestrator.runtime.scope import Scope
from orchestrator.spec.models import DynamicTaskGroup, Task, TaskBase
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


def expand(group: DynamicTaskGroup, scope: Scope, source: SourceMap) -> Body:
    """A dynamic_task_group's tasks, rendered (a template) or as written, validated and planned."""
    specs = render(group.tasks, scope) if isinstance(group.tasks, str) else group.tasks
    return plan_generated(specs, group, source)
