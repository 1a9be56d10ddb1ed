"""The dispatch function: what a state machine cannot evaluate itself, by the runtime's rules.

Conditions, for_loop items, while_loop steps, dynamic_task_group expansion, child pipeline
inputs, fallback values and the `outputs` section: each action calls the function of
`orchestrator.runtime` that the embedded engine calls for the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from orchestrator.aws.deployed import event_location, pipeline_location, plan_of_file
from orchestrator.aws.events import DispatchError, DispatchEvent, LoopModel, error_class, task_failure
from orchestrator.aws.execution import error_from_catch
from orchestrator.aws.payloads import load, offload, offload_members, resolve, store
from orchestrator.aws.state_budget import divided
from orchestrator.aws.task_scope import PreparedTask, prepare_task
from orchestrator.errors import TaskError
from orchestrator.runtime.documents import ErrorInfo
from orchestrator.runtime.generated import expand
from orchestrator.runtime.leaf import render
from orchestrator.runtime.loops import for_loop_items, for_loop_output, while_iteration, while_state
from orchestrator.runtime.pipelines import child_failed, child_run, render_outputs
from orchestrator.runtime.policy import effective_policy
from orchestrator.runtime.task import condition_holds, failure_outcome
from orchestrator.sealing.base import Sealer
from orchestrator.sealing.inputs import default_sealer, seal_inputs
from orchestrator.settings import aws_settings, lambda_settings
from orchestrator.spec.models import DynamicTaskGroup, ForLoop, PipelineGroup, WhileLoop
from orchestrator.stores.base import Stores
from orchestrator.stores.factory import open_stores


def _offloaded(value: Any, prepared: PreparedTask, name: str, limit: int | None = None) -> Any:
    """A value as it goes back into the execution state: in S3 when above its inline limit
    (`payloads.offload`; by default the call's), as a task's output is."""
    limit = prepared.inline_limit if limit is None else limit
    return offload(value, prepared.run.run_id, name, aws_settings().payload_bucket, limit=limit)


def _iterations_run(event: DispatchEvent, limit: int) -> dict[str, Any]:
    """The run that a loop's iterations (or a dynamic group's tasks) get: this one, with the
    inline limit of the values in their states."""
    return {**event.run.model_dump(exclude_unset=True), "inline_limit": limit}


def _condition(prepared: PreparedTask, event: DispatchEvent) -> dict[str, Any]:
    task = prepared.location.task
    if isinstance(task, WhileLoop):
        raise DispatchError("a while_loop's condition is evaluated by the 'while' action")
    return {"value": condition_holds(task.condition, prepared.scope)}


def _items(prepared: PreparedTask, event: DispatchEvent) -> list[Any] | dict[str, Any]:
    """The for_loop's items; for a state machine with a state budget, `{"items", "run"}`: each
    item in S3 when above the iterations' inline limit, and the run they get (`_iterations_run`)."""
    task = prepared.location.task
    if not isinstance(task, ForLoop):
        raise DispatchError(f"'items' needs a for_loop, not {type(task).__name__}")
    items = list(prepared.run.redactor.value(for_loop_items(task, prepared.scope)))
    if event.state_budget is None:
        return items
    name = f"{prepared.location.name}.item"
    if event.inline_up_to is not None and len(items) > event.inline_up_to:
        return _distributed_items(items, prepared, event, name)
    limit = divided(prepared.inline_limit, len(items))
    kept = [_offloaded(item, prepared, name, limit) for item in items]
    answer: dict[str, Any] = {"items": kept, "run": _iterations_run(event, limit)}
    if event.inline_up_to is not None:  # the state machine chooses the Map by `distributed`
        answer |= {"distributed": False, "source": None}
    return answer


def _distributed_items(
    items: list[Any], prepared: PreparedTask, event: DispatchEvent, name: str
) -> dict[str, Any]:
    """Items for a Distributed Map: each iteration is a child execution with a state of its own,
    so an item may take the whole share of this call's values (the limit is not divided); the
    list itself goes to S3 (`source`), where the Map reads it (`ItemReader`), whatever its
    length. The iterations' run keeps the undivided limit."""
    bucket = aws_settings().payload_bucket
    if not bucket:
        raise DispatchError("a distributed for_loop needs the payload bucket (ORCHESTRATOR_PAYLOAD_BUCKET)")
    kept = [_offloaded(item, prepared, name, prepared.inline_limit) for item in items]
    key = store(kept, prepared.run.run_id, f"{prepared.location.name}.items", bucket)
    return {
        "items": [],
        "run": _iterations_run(event, prepared.inline_limit),
        "distributed": True,
        "source": {"Bucket": bucket, "Key": key},
    }


def _with_message(caught: Any, message: str) -> Any:
    """A Catch result (`{"Error", "Cause"}`) whose error now reads `message`, its type kept."""
    if not isinstance(caught, dict):
        return caught
    cause = caught.get("Cause")
    try:
        payload = json.loads(cause) if isinstance(cause, str) else None
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return {**caught, "Cause": json.dumps({**payload, "errorMessage": message})}
    return {**caught, "Cause": message}


def _render(prepared: PreparedTask, event: DispatchEvent) -> dict[str, Any]:
    """A task's field rendered: `fallback_value` exactly as the engine's `on_failure` does
    (`runtime.task.failure_outcome`: one that cannot be rendered gives None and the reason is
    added to the task's error message), any other dotted field strictly."""
    location = prepared.location
    if event.field is None:
        raise DispatchError("'render' needs 'field'")
    error = event.error
    if event.field == "fallback_value":
        policy = effective_policy(location.task, location.plan.pipeline)
        caught = error_from_catch(error if isinstance(error, dict) else None)
        failure = caught if caught is not None else ErrorInfo("", "")
        outcome = failure_outcome(policy, prepared.scope, failure, 0, prepared.run.redactor)
        value = outcome.output
        if caught is not None and outcome.error is not None and outcome.error.message != caught.message:
            error = _with_message(error, outcome.error.message)
    else:
        source: Any = location.task
        for part in event.field.split("."):
            if not isinstance(source, BaseModel) or part not in type(source).model_fields:
                raise DispatchError(f"task '{location.name}' has no field '{event.field}'")
            source = getattr(source, part)
        value = render(
            source.model_dump(mode="json") if isinstance(source, BaseModel) else source, prepared.scope
        )
    output = _offloaded(prepared.run.redactor.value(value), prepared, location.name)
    if event.mark_degraded:
        mark_degraded(prepared.run.stores, event.run.id)
    return {"status": event.status, "output": output, "error": error}


def _while(prepared: PreparedTask, event: DispatchEvent) -> dict[str, Any]:
    """One while_loop step (`runtime.loops.while_iteration`); see `dispatch` for the rule."""
    task = prepared.location.task
    if not isinstance(task, WhileLoop):
        raise DispatchError(f"'while' needs a while_loop, not {type(task).__name__}")
    loop = event.loop or LoopModel()
    after_iteration = "last" in event.model_fields_set
    index = loop.index + 1 if after_iteration else loop.index
    # the last output, or the state so far, may have travelled as a reference to S3
    state = while_state(resolve(event.last)) if after_iteration else dict(resolve(loop.state) or {})
    keep_going = while_iteration(task, prepared.top, index, state) is not None
    kept = _offloaded(prepared.run.redactor.value(state), prepared, f"{prepared.location.name}.state")
    return {"index": index, "state": kept, "continue": keep_going}


def _expand(prepared: PreparedTask, event: DispatchEvent) -> list[dict[str, Any]] | dict[str, Any]:
    """A dynamic_task_group's generated specs, validated and planned exactly as the engine does;
    for a state machine with a state budget, `{"specs", "run"}`: each spec in S3 when above the
    generated tasks' inline limit, and the run they get (`_iterations_run`)."""
    location = prepared.location
    task = location.task
    if not isinstance(task, DynamicTaskGroup):
        raise DispatchError(f"'expand' needs a dynamic_task_group, not {type(task).__name__}")
    body = expand(task, prepared.scope, location.plan.source.source)
    expanded = []
    for index, name in enumerate(body.nodes):
        dumped = body.nodes[name].task.model_dump(mode="json", exclude_none=True)
        dumped.setdefault("name", name)
        entry = {"index": index, "spec": dumped, "type": dumped["type"], "name": name}
        if event.functions is not None:
            entry["function"] = _generated_function(event.functions, index, dumped["type"])
        expanded.append(entry)
    expanded = list(prepared.run.redactor.value(expanded))
    if event.state_budget is None:
        return expanded
    limit = divided(prepared.inline_limit, len(expanded))
    for entry in expanded:
        entry["spec"] = _offloaded(entry["spec"], prepared, f"{location.name}.{entry['name']}.spec", limit)
    return {"specs": expanded, "run": _iterations_run(event, limit)}


def _generated_function(functions: dict[str, str], index: int, kind: str) -> str:
    """The function a state machine runs generated task number `index` on: its type's (the
    definition gives one for each type it can run), else the task is `InvalidTaskSpec`."""
    if kind not in functions:
        raise TaskError(
            "InvalidTaskSpec",
            f"generated task {index}: on AWS a dynamic_task_group may generate python, llm and web "
            f"search tasks only, not a {kind}",
        )
    return functions[kind]


def _child_inputs(prepared: PreparedTask, event: DispatchEvent, sealer: Sealer | None) -> dict[str, Any]:
    """Inputs of child pipeline `child` (`runtime.pipelines.child_run`), sealed where they
    are sensitive in the child or carry a sensitive value of the parent."""
    location = prepared.location
    task = location.task
    if not isinstance(task, PipelineGroup):
        raise DispatchError(f"'child_inputs' needs a pipeline_group, not {type(task).__name__}")
    if event.child is None or not 0 <= event.child < len(task.pipelines):
        raise DispatchError(f"'child_inputs' needs 'child', an index below {len(task.pipelines)}")
    child_plan, inputs = child_run(task, event.child, prepared.scope, location.plan.path, plan_of_file)
    redactor = prepared.run.redactor
    secret = {name for name, value in inputs.items() if redactor.holds(value)}
    names = child_plan.pipeline.sensitive_inputs() | secret
    sealed = seal_inputs(child_plan.pipeline_id, inputs, names, sealer or default_sealer())
    # the child's tasks resolve them (`task_scope.prepare_task`)
    name = f"{location.name}.{child_plan.pipeline_id}.inputs"
    bucket = aws_settings().payload_bucket
    return offload_members(sealed, prepared.run.run_id, name, bucket, limit=prepared.inline_limit)


def _child_failed(prepared: PreparedTask, event: DispatchEvent) -> dict[str, str]:
    """The error a pipeline_group fails with when its child `child` failed
    (`runtime.pipelines.child_failed`, as on the engine), from the Catch result `error` of the
    child's top-level task `failed_task`: `{"Error", "Cause"}`, for a Fail state."""
    task = prepared.location.task
    if not isinstance(task, PipelineGroup):
        raise DispatchError(f"'child_failed' needs a pipeline_group, not {type(task).__name__}")
    if event.child is None or not 0 <= event.child < len(task.pipelines):
        raise DispatchError(f"'child_failed' needs 'child', an index below {len(task.pipelines)}")
    caught = error_from_catch(event.error if isinstance(event.error, dict) else None)
    caught = caught or ErrorInfo("TaskFailed", "failed")
    failure = child_failed(
        task, event.child, {"task": event.failed_task, "type": caught.type, "message": caught.message}
    )
    message = prepared.run.redactor.text(failure.message)
    return {
        "Error": failure.error_type,
        "Cause": json.dumps({"errorType": failure.error_type, "errorMessage": message}),
    }


def _outputs(prepared: PreparedTask, event: DispatchEvent) -> Any:
    outputs = prepared.location.plan.pipeline.outputs
    if outputs is None:
        return None
    return _offloaded(
        prepared.run.redactor.value(render_outputs(outputs, prepared.scope)), prepared, "outputs"
    )


def _collect(prepared: PreparedTask, event: DispatchEvent) -> dict[str, Any]:
    """A distributed for_loop's output, from what its Distributed Map wrote (`manifest`: the
    ResultWriter's manifest, as AWS writes it): every child execution's output is
    `{index, output}` or `{index, error}` (`asl._child_iteration`). If any iteration failed,
    the loop fails with the first one's error (by index), its type and message kept, as an
    inline Map's failure would give it; else its output is the iterations' outputs in item
    order (`runtime.loops.for_loop_output`), as a reference to S3. `degraded`: a task degraded
    in some child execution of this run (`mark_degraded`)."""
    if event.manifest is None:
        raise DispatchError("'collect' needs the Distributed Map's 'manifest'")
    bucket = str(event.manifest["Bucket"])
    manifest = load(bucket, str(event.manifest["Key"]))
    files = manifest.get("ResultFiles") or {}
    outputs: dict[int, Any] = {}
    failures: dict[int, Any] = {}
    for status in ("SUCCEEDED", "FAILED"):
        for written in files.get(status) or []:
            for child in load(bucket, str(written["Key"])):
                if child.get("Status") != "SUCCEEDED":  # the iteration's own Parallel failed
                    raise error_class(str(child.get("Error") or "States.TaskFailed"))(
                        prepared.run.redactor.text(str(child.get("Cause") or "an iteration failed"))
                    )
                result = json.loads(child["Output"])
                if "error" in result:
                    failures[int(result["index"])] = result["error"]
                else:
                    outputs[int(result["index"])] = result["output"]
    if failures:
        caught = failures[min(failures)]
        failure = error_from_catch(caught)
        assert failure is not None
        error_type = str(caught.get("Error") or failure.type) if isinstance(caught, dict) else failure.type
        raise task_failure(TaskError(error_type, failure.message), prepared.run.redactor)
    output = for_loop_output(outputs)
    kept = _offloaded(output, prepared, prepared.location.name, 0)  # a reference, unless tiny
    return {"output": kept, "degraded": degraded_marked(prepared.run.stores, event.run.id)}


DEGRADED_MARK = "degraded"
DEGRADED_TTL = 7 * 24 * 3600


def _marks(run_id: str) -> str:
    return f"run:{run_id}:marks"


def mark_degraded(stores: Stores, run_id: str) -> None:
    """Note, in the run-scoped state, that a task of run `run_id` ended degraded where the run's
    document cannot see it: in a distributed for_loop's child execution."""
    stores.state.write(_marks(run_id), DEGRADED_MARK, True, ttl=DEGRADED_TTL)


def degraded_marked(stores: Stores, run_id: str) -> bool:
    return stores.state.read(_marks(run_id), DEGRADED_MARK).value is True


_ACTIONS: dict[str, Callable[[PreparedTask, DispatchEvent], Any]] = {
    "condition": _condition,
    "items": _items,
    "render": _render,
    "while": _while,
    "expand": _expand,
    "child_failed": _child_failed,
    "outputs": _outputs,
    "collect": _collect,
}


def dispatch(event: DispatchEvent, stores: Stores | None = None, *, sealer: Sealer | None = None) -> Any:
    """Evaluate what ASL cannot, for the task at `event.task`. By `action`:

    - `condition`: `{"value": bool}`, the task's condition.
    - `items`: the for_loop's rendered `iterate_over` as a list (a mapping gives
      `[key, value]` pairs); anything else fails with `InvalidLoopItems`. With `state_budget`:
      `{"items", "run"}`, the items (each in S3 above the iterations' inline limit: the call's
      divided by their number) and the run the iterations get (its `inline_limit` that one).
      With `inline_up_to` (a for_loop that may run as a Distributed Map) also `distributed`:
      true when there are more items than that, and then `items` is empty and `source`
      (`{"Bucket", "Key"}`) holds them in S3, each in S3 above the undivided limit.
    - `render`: `{"status", "output", "error"}`: `field` rendered (`fallback_value` as the
      engine's `on_failure` does, or a dotted field of the task); `status` and `error` are
      passed through, so the result is the task's record.
    - `while`: `{"index", "state", "continue"}` (below).
    - `expand`: `[{"index", "spec", "type", "name"}]`, the dynamic_task_group's specs
      validated and planned (`InvalidTaskSpec`), each spec with its `name` filled in; given
      `functions` (type -> function), each also has the `function` that runs it, and a spec of
      a type without one is `InvalidTaskSpec`. With `state_budget`: `{"specs", "run"}`, as
      `items` gives its items and run.
    - `child_inputs`: the inputs of pipeline_group child number `child`, resolved against
      the child's `input_variables`, sealed where sensitive, the largest in S3 when together
      they are above the call's inline limit.
    - `child_failed`: `{"Error", "Cause"}` of the pipeline_group whose child number `child`
      failed in its task `failed_task` with the Catch result `error` (for a Fail state).
    - `outputs`: the pipeline's rendered `outputs` section (no `task` needed).
    - `collect`: `{"output", "degraded"}` of a distributed for_loop, from the results its
      Distributed Map wrote (`manifest`); an iteration's failure fails it (`_collect`).

    `while` is called once before the first iteration, without `last`, with `loop` =
    `{"index": 0, "state": {}}`; then after every iteration with `loop` = its previous
    answer and `last` = the output of the body's last task (which may be null). It answers
    `index` = iterations done (`loop.index + 1` when `last` is given, else `loop.index`),
    `state` = `last` if it is a mapping, `{}` if `last` is given but is not, else
    `loop.state`; and `continue` = `index < max_iterations` and the loop condition is true
    with `loop_state` = state and `loop_index` = index. When `continue` is false the loop's
    output is `{"iterations": index, "state": state}`, as on the engine.

    Every value returned is redacted, and a value put into the state is in S3 when above the
    call's inline limit (`task_scope.limit_of`, `payloads.offload`): a rendered field, the
    `outputs` section, a while_loop's `state`. References to S3 in what the call is given are
    resolved first. A failure raises a `TaskFailure` named by its type. With `mark_degraded`,
    a `render` notes that the run is degraded (`mark_degraded`).
    """
    settings = lambda_settings()
    if event.action == "outputs":
        location = pipeline_location(event.pipeline)
    else:
        location = event_location(event, event.task)
    stores = stores or open_stores(settings, location.plan.pipeline.state_management.storage_backend)
    is_while = event.action == "while"
    prepared = prepare_task(
        event,
        location,
        stores,
        sealer,
        loop_container=location.task if is_while else None,
        drop_loop_outputs=is_while,
    )
    try:
        if event.action == "child_inputs":
            return _child_inputs(prepared, event, sealer)
        return _ACTIONS[event.action](prepared, event)
    except TaskError as error:
        raise task_failure(error, prepared.run.redactor) from None
