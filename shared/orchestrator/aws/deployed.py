"""Finding a deployed task: a pipeline by its id, a task by its dotted reference in the file.

Deployed pipelines are `<pipelines_dir>/<pipeline_id>.yaml` (the runtime layer's `pipelines`
folder); each is read and planned once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.aws.events import DispatchError, EventBase, task_failure
from orchestrator.errors import OrchestratorError, PipelineValidationError, TaskError
from orchestrator.plan import Body, Node, Plan, build_plan, dependency_closure, plan_tasks
from orchestrator.runtime.generated import validate_spec
from orchestrator.runtime.redact import Redactor
from orchestrator.settings import AwsSettings, aws_settings
from orchestrator.spec.loading import read_pipeline
from orchestrator.spec.models import (
    ForLoop,
    TaskBase,
    WhileLoop,
)


class UnknownPipelineError(OrchestratorError):
    """No deployed pipeline has this id."""


class UnknownTaskError(OrchestratorError):
    """A task reference names no task of the pipeline (the payload and the file disagree)."""


_PIPELINE_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class _Loaded:
    plan: Plan
    nodes: dict[tuple[str | int, ...], Node]


@dataclass(frozen=True)
class TaskLocation:
    """A task found by reference, with what running it needs from its surroundings."""

    plan: Plan
    task: TaskBase
    name: str
    reads: frozenset[str]
    loop: TaskBase | None  # the innermost for/while loop around the task
    fallback: bool  # an `error_handling.fallback`: no condition, no cache (as on the engine)
    node: Node | None
    # a task that reads by computed name: the names it may see (None: what it is passed)
    visible: frozenset[str] | None = None
    # the loops around `loop`, outermost first: their iterations' variables are seen too
    outer_loops: tuple[TaskBase, ...] = ()
    # the names of `outer_loops` and `loop`, outermost first (the task's telemetry path)
    loop_names: tuple[str, ...] = ()
    # a generated task: the name of the dynamic_task_group that generated it
    group: str | None = None


def _index_nodes(body: Body, found: dict[tuple[str | int, ...], Node]) -> None:
    for node in body.nodes.values():
        found[tuple(node.location)] = node
        if node.body is not None:
            _index_nodes(node.body, found)


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> _Loaded:
    plan = build_plan(read_pipeline(path))
    nodes: dict[tuple[str | int, ...], Node] = {}
    _index_nodes(plan.body, nodes)
    return _Loaded(plan, nodes)


def pipeline_path(pipeline_id: str, settings: AwsSettings | None = None) -> Path:
    """`<pipelines_dir>/<pipeline_id>.yaml`; an id that is not a plain file stem is unknown."""
    folder = (settings or aws_settings()).pipelines_dir
    if (
        not pipeline_id
        or pipeline_id.startswith(".")
        or not set(pipeline_id) <= _PIPELINE_ID_CHARACTERS
        or len(pipeline_id) > 128
    ):
        raise UnknownPipelineError(f"'{pipeline_id}' is not a pipeline id")
    path = folder / f"{pipeline_id}.yaml"
    if not path.is_file():
        raise UnknownPipelineError(f"no pipeline '{pipeline_id}' (looked for {path.name} in {folder})")
    return path


def plan_of_file(path: Path) -> Plan:
    """The plan of a pipeline file (a child pipeline), read once per process."""
    return _load(path).plan


def load_plan(pipeline_id: str, settings: AwsSettings | None = None) -> Plan:
    """The validated plan of a deployed pipeline, parsed once per process."""
    return _load(pipeline_path(pipeline_id, settings)).plan


def _parse_reference(reference: str) -> list[str | int]:
    parts: list[str | int] = [int(part) if part.isdigit() else part for part in reference.split(".")]
    if not parts or parts[0] != "tasks":
        raise UnknownTaskError(f"task reference '{reference}' must start with 'tasks.'")
    return parts


def _walk(root: Any, parts: list[str | int], reference: str) -> list[Any]:
    """The chain of values from the pipeline to the referenced task."""
    chain = [root]
    current = root
    for part in parts:
        if isinstance(part, int) and isinstance(current, list) and 0 <= part < len(current):
            current = current[part]
        elif isinstance(part, str) and isinstance(current, BaseModel) and part in type(current).model_fields:
            current = getattr(current, part)
        else:
            raise UnknownTaskError(f"task reference '{reference}' does not name a task (at '{part}')")
        chain.append(current)
    if not isinstance(current, TaskBase):
        raise UnknownTaskError(f"task reference '{reference}' does not name a task")
    return chain


def locate_task(pipeline_id: str, reference: str, settings: AwsSettings | None = None) -> TaskLocation:
    """Find a task by its dotted reference, with its name, what it reads and its loop."""
    loaded = _load(pipeline_path(pipeline_id, settings))
    parts = _parse_reference(reference)
    chain = _walk(loaded.plan.pipeline, parts, reference)
    task: TaskBase = chain[-1]
    fallback = parts[-2:] == ["error_handling", "fallback"]
    owner_parts = parts[:-2] if fallback else parts
    node = loaded.nodes.get(tuple(owner_parts))
    owner: TaskBase = chain[-3] if fallback else task
    name = node.name if node is not None else (owner.name or f"task_{owner_parts[-1]}")
    enclosing = [item for item in chain[1:-1] if isinstance(item, ForLoop | WhileLoop) and item is not owner]
    loop_names = tuple(
        _node_name(loaded, parts[:index], item)
        for index, item in enumerate(chain)
        if 0 < index < len(chain) - 1 and isinstance(item, ForLoop | WhileLoop) and item is not owner
    )
    return TaskLocation(
        plan=loaded.plan,
        task=task,
        name=name,
        reads=node.reads if node is not None and not fallback else frozenset(),
        loop=enclosing[-1] if enclosing else None,
        fallback=fallback,
        node=None if fallback else node,
        visible=_waited_for(loaded, owner_parts) if node is not None and node.computed_reads else None,
        outer_loops=tuple(enclosing[:-1]),
        loop_names=loop_names,
    )


def _node_name(loaded: _Loaded, parts: list[str | int], task: TaskBase) -> str:
    """The name the plan gives the task at `parts` (an unnamed one has one made up)."""
    node = loaded.nodes.get(tuple(parts))
    return node.name if node is not None else (task.name or f"task_{parts[-1]}")


def _waited_for(loaded: _Loaded, parts: list[str | int]) -> frozenset[str]:
    """What a task that reads by computed name sees: every task it waits for (directly or not)
    in its body and, through the loops and groups around it, in theirs, parallel_group children
    included. They have all finished, so the embedded engine sees them too; the planner made
    the task wait for every task before it (plan.py), so these are the tasks before it. Others
    in `$.tasks` (a child pipeline's parent, a while loop's previous iteration, a task that
    only happened to run first) are not shown: on the engine they are absent or not certain."""
    names: set[str] = set()
    body: Body | None = loaded.plan.body
    for end in range(2, len(parts) + 1, 2):
        node = loaded.nodes.get(tuple(parts[:end]))
        if node is None or body is None or node.name not in body.nodes:
            break
        waited = dependency_closure(body, node.name)
        names.update(name for name, target in body.exposed.items() if target in waited)
        body = node.body
    return frozenset(names)


def find_task(pipeline_id: str, reference: str) -> tuple[Plan, TaskBase, str]:
    """The plan, the task model and the task's name for a dotted reference like `tasks.1.tasks.0`."""
    location = locate_task(pipeline_id, reference)
    return location.plan, location.task, location.name


def _inline_location(around: TaskLocation, spec: dict[str, Any], name: str | None) -> TaskLocation:
    """A generated task given inline, located in the group that generated it."""
    task = validate_spec(spec, 0)
    try:
        body = plan_tasks([task], around.plan.source.source)
    except PipelineValidationError as error:
        message = "; ".join(d.message for d in error.diagnostics)
        raise TaskError("InvalidTaskSpec", message) from None
    (node,) = body.nodes.values()
    loop = around.task if isinstance(around.task, ForLoop | WhileLoop) else around.loop
    outer = around.outer_loops
    loop_names = around.loop_names
    if loop is not around.loop and around.loop is not None:
        outer = (*outer, around.loop)
    if loop is around.task:
        loop_names = (*loop_names, around.name)
    return TaskLocation(
        plan=around.plan,
        task=task,
        name=name or task.name or node.name,
        reads=node.reads,
        loop=loop,
        fallback=False,
        node=node,
        outer_loops=outer,
        loop_names=loop_names,
        group=around.name,
    )


def event_location(event: EventBase, reference: str | None) -> TaskLocation:
    """The task a payload names; an invalid inline spec (a generated task) fails as
    `InvalidTaskSpec`."""
    if reference is None:
        raise DispatchError("this payload needs 'task', the dotted reference of a task")
    location = locate_task(event.pipeline, reference)
    if event.spec is None:
        return location
    try:
        return _inline_location(location, event.spec, event.name)
    except TaskError as error:
        raise task_failure(error, Redactor()) from None


def pipeline_location(pipeline_id: str) -> TaskLocation:
    """The pipeline itself, as the location of what belongs to no task (its `outputs`)."""
    plan = load_plan(pipeline_id)
    return TaskLocation(plan, TaskBase(), "outputs", frozenset(), None, False, None)
