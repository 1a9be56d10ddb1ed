"""The scope a Lambda rebuilds from its payload: the one the embedded engine would have built.

Sensitive inputs travel sealed (see `orchestrator.sealing`) and are opened only inside the
Lambda that needs them; the redactor masks them and the secrets the task reads in everything
that goes back into the execution state, which the execution history keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.aws.deployed import TaskLocation, load_plan, plan_of_file
from orchestrator.aws.events import EventBase, LoopModel, TaskEvent
from orchestrator.aws.payloads import LIMIT, resolve
from orchestrator.aws.state_budget import STATE_BUDGET, divided, inline_limit, state_records
from orchestrator.plan import Plan
from orchestrator.runtime.context import RunInfo
from orchestrator.runtime.loops import for_iteration, while_scope
from orchestrator.runtime.pipelines import run_scope
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.sealing.base import Sealer
from orchestrator.sealing.inputs import open_inputs
from orchestrator.spec.models import ForLoop, ParallelGroup, PipelineGroup, TaskBase, WhileLoop
from orchestrator.stores.base import Stores

DEFAULT_USER = "aws"
"""`context.get_user_id()` on AWS when the run names nobody (the API passes its caller)."""


def visible_outputs(
    tasks: Mapping[str, Any], outputs: Mapping[str, Any], only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Task outputs by name from `$.tasks` records (parallel-group children included) and
    `outputs`; with `only`, just those names."""
    found: dict[str, Any] = {}
    for name, record in tasks.items():
        if not isinstance(record, dict):
            continue
        found[name] = record.get("output")
        for child, child_record in (record.get("children") or {}).items():
            if isinstance(child_record, dict):
                found.setdefault(child, child_record.get("output"))
    found.update(outputs)
    return {name: resolve(value) for name, value in found.items() if only is None or name in only}


def _declared_names(tasks: list[Any]) -> set[str]:
    names: set[str] = set()
    for task in tasks:
        if task.name:
            names.add(task.name)
        if isinstance(task, ForLoop | WhileLoop | ParallelGroup):
            names |= _declared_names(task.tasks)
    return names


@dataclass
class PreparedTask:
    """What every action needs: the located task, opened inputs, run info and scope."""

    location: TaskLocation
    inputs: dict[str, Any]
    run: RunInfo
    scope: Scope
    top: Scope
    inline_limit: int = LIMIT  # the bytes a value this call puts into the state may take there


def _run_id(event: EventBase) -> str:
    """The run id the engine would use: a child pipeline's tasks run as `<run id>.<child id>`."""
    if event.run.pipeline == event.pipeline:
        return event.run.id
    return f"{event.run.id}.{event.pipeline}"


def _redactor(plan: Plan, inputs: Mapping[str, Any], sealed: set[str]) -> Redactor:
    redactor = Redactor()
    for name in plan.pipeline.sensitive_inputs() | sealed:
        if name in inputs:
            redactor.add(inputs[name])
    return redactor


def _child_outputs(plan: Plan, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """What `context.get_pipeline_output` reads: the outputs of the pipeline groups passed in."""
    children: dict[str, Any] = {}
    for node in plan.body.nodes.values():
        if isinstance(node.task, PipelineGroup) and isinstance(outputs.get(node.name), dict):
            children.update(outputs[node.name])
    return children


def _loop_scope(
    top: Scope,
    loop: LoopModel,
    container: TaskBase | None,
    outer_loops: tuple[TaskBase, ...],
    names: tuple[str, ...] = (),
) -> Scope:
    """The iteration's scope, inside those of the loops around it (`loop.outer`), as the
    engine nests them; an item or state may have travelled as a reference to S3. `names`:
    the loops' names, outermost first, for the scope's place (`Scope.place`)."""
    iterations: list[LoopModel] = []  # innermost first
    found: LoopModel | None = loop
    while found is not None:
        iterations.append(found)
        found = found.outer
    containers = [container, *reversed(outer_loops)][: len(iterations)]  # innermost first
    innermost_names = [*reversed(names), *[""] * len(iterations)]
    scope = top
    for model, around, name in reversed(list(zip(iterations, containers, innermost_names, strict=False))):
        scope = _one_iteration(scope, model, around, name)
    return scope


def _one_iteration(scope: Scope, loop: LoopModel, container: TaskBase | None, name: str) -> Scope:
    item_variable = container.item_variable if isinstance(container, ForLoop) else loop.item_variable
    if isinstance(container, WhileLoop) or item_variable is None:
        return while_scope(scope, loop.index, dict(resolve(loop.state) or {}), name)
    return for_iteration(scope, item_variable, loop.index, resolve(loop.item), name)


def limit_of(event: EventBase, plan: Plan) -> int:
    """The bytes a value this call puts into the state may take there (`state_budget`): the
    run's own limit inside a loop's iterations, else the budget shared by the records of the
    run's pipeline (the top one: a child pipeline's tasks share its state)."""
    if event.run.inline_limit is not None:
        return event.run.inline_limit
    root = plan
    if event.run.pipeline != event.pipeline:
        try:
            root = load_plan(event.run.pipeline)
        except Exception:  # not deployed beside it: its own plan is the best guess
            root = plan
    limit = inline_limit(event.state_budget or STATE_BUDGET, state_records(root, plan_of_file))
    if event.loop is not None and event.loop.count is not None:
        # an iteration of a loop the state machine counted itself (`asl._array_input_in_place`)
        return divided(limit, event.loop.count)
    return limit


def prepare_task(
    event: EventBase,
    location: TaskLocation,
    stores: Stores,
    sealer: Sealer | None,
    *,
    loop_container: TaskBase | None = None,
    drop_loop_outputs: bool = False,
) -> PreparedTask:
    """Build the scope exactly as the engine's `top_scope` and loop iterations do."""
    plan = location.plan
    # a child pipeline's inputs may have travelled as references to S3 (`payloads.offload_members`)
    inputs, sealed = open_inputs(event.pipeline, resolve(event.inputs), sealer)
    redactor = _redactor(plan, inputs, sealed)
    # a leaf that reads by computed name is passed every task: it sees those it waits for
    only = location.visible if isinstance(event, TaskEvent) and event.spec is None else None
    outputs = visible_outputs(event.tasks, event.outputs, only)
    run = RunInfo(
        run_id=_run_id(event),
        pipeline_id=plan.pipeline_id,
        user_id=event.run.user_id or DEFAULT_USER,
        stores=stores,
        redactor=redactor,
        persistence=plan.pipeline.state_management.persistence,
        state_ttl=plan.pipeline.state_management.ttl,
        started_at=event.run.started_at,
        child_outputs=_child_outputs(plan, outputs),
    )
    top = run_scope(inputs, run.run_id, run.pipeline_id, run.started_at)
    container = loop_container or location.loop
    scope = top
    inner: set[str] = set()
    if event.loop is not None:
        outer = location.outer_loops
        if loop_container is not None and location.loop is not None:
            outer = (*outer, location.loop)  # a while_loop's own step: the loops around it
        names = location.loop_names if loop_container is None else ()
        scope = _loop_scope(top, event.loop, container, outer, names)
        inner = _declared_names(getattr(container, "tasks", []))
    for name, value in outputs.items():
        if name not in inner:
            top.outputs[name] = value
        elif not drop_loop_outputs:
            scope.outputs[name] = value
    return PreparedTask(location, inputs, run, scope, top, limit_of(event, plan))
