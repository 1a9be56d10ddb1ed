"""The task functions' job: one attempt of a leaf task, from its event to its result.

The handler decodes the event (`TaskEvent`), this module rebuilds the scope (`task_scope`) and
hands the task to the runtime (`orchestrator.runtime.task`): its cache entry, one attempt,
the cache write (its condition is decided before, by the state machine or the dispatch
function). Retries, the fallback task and `on_failure` belong to the state
machine: one invocation is one attempt, recorded in the run's telemetry as the engine records
its attempts (`TaskRun.attempting`: two items, when it starts and when it ends).
An attempt that failed with a provider's
``Retry-After`` longer than the state machine's next wait sleeps the difference before it
fails (`TaskRun.unscheduled_wait`), so the next attempt waits as long as on the engine.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.aws.deployed import TaskLocation, event_location, load_plan
from orchestrator.aws.events import DispatchError, DispatchEvent, TaskEvent, task_failure
from orchestrator.aws.payloads import is_reference, offload, resolve
from orchestrator.aws.task_scope import PreparedTask, prepare_task
from orchestrator.errors import TaskError
from orchestrator.runtime.attempt import Attempt
from orchestrator.runtime.documents import ErrorInfo, TaskOutcome, TaskStatus
from orchestrator.runtime.leaf import LEAF_TYPES, Services, run_leaf
from orchestrator.runtime.policy import effective_policy, task_timeout
from orchestrator.runtime.sandbox import SANDBOX_GRACE, limits_for, run_sandboxed
from orchestrator.runtime.task import PipelineAborted, TaskRun, attempt_leaf, carry_task, timeout_error
from orchestrator.runtime.task_streams import task_streams
from orchestrator.runtime.telemetry import GENERATED, TaskPlace, carrying, task_path
from orchestrator.sealing.base import Sealer
from orchestrator.settings import Settings, aws_settings, lambda_settings
from orchestrator.spec.models import TaskBase
from orchestrator.stores.base import Stores, Versioned
from orchestrator.stores.factory import open_stores

_ANSWER_MARGIN = 5.0
"""Seconds of an invocation kept free after waiting out a Retry-After, to fail in time."""

_SERVICES: list[tuple[Settings, Services]] = []
_SERVICES_LOCK = threading.Lock()


def default_services(settings: Settings) -> Services:
    """LLM and search clients kept for the life of the container (rebuilt if settings change)."""
    with _SERVICES_LOCK:
        if _SERVICES and _SERVICES[0][0] == settings:
            return _SERVICES[0][1]
        if _SERVICES:
            _SERVICES.pop()[1].close()
        services = Services(settings)
        _SERVICES.append((settings, services))
        return services


def _with_timeout(work: Callable[[], Any], timeout: float | None, name: str, grace: float = 0.0) -> Any:
    """Run `work`, failing with the engine's `TaskTimeout` if it outlives the task's timeout
    (`grace` more seconds, for work that stops itself at the timeout: a sandboxed attempt)."""
    if timeout is None:
        return work()
    result: list[Any] = []
    failure: list[BaseException] = []
    attempt = Attempt()

    def target() -> None:
        try:
            result.append(attempt.run(work))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target, name=f"task-{name}", daemon=True)
    thread.start()
    thread.join(timeout + grace)
    if thread.is_alive():
        attempt.stop()  # a warm container must not go on running it (`runtime.attempt`)
        raise timeout_error(name, timeout)
    if failure:
        raise failure[0]
    return result[0]


def _attempt(task: TaskBase, prepared: PreparedTask, services: Services) -> Any:
    """One attempt of a leaf task (the located one, or its fallback) under the located task's
    name, within its timeout (`runtime.task.attempt_leaf`).

    A task with a `memory_limit` or `cpu_limit` (its own or its pipeline's) runs in the
    sandbox's child process, as on the embedded engine: the same address-space limit, CPU
    affinity and kill at its timeout, so a breach fails with the same `MemoryLimitExceeded` or
    `TaskTimeout`. The Lambda function it runs on is sized for it (`aws.functions`): its memory
    is the backstop, never the limit."""
    name = prepared.location.name
    if not isinstance(task, LEAF_TYPES):
        raise DispatchError(f"task '{name}' is a {type(task).__name__}, not a leaf task")
    pipeline = prepared.location.plan.pipeline
    limits = limits_for(task, pipeline)
    scope, run, inputs = prepared.scope, prepared.run, prepared.inputs
    leaf: Callable[[], Any]
    if limits is not None:
        backend = pipeline.state_management.storage_backend
        leaf = carrying(functools.partial(run_sandboxed, task, name, scope, run, backend, inputs, limits))
    else:
        leaf = carrying(functools.partial(run_leaf, task, name, scope, run, services, inputs))
    grace = SANDBOX_GRACE if limits is not None else 0.0
    # descriptors 1 and 2 are captured where one invocation has the process (Lambda); the
    # emulator runs containers as threads of the command, whose own pipe already holds them
    with task_streams(run.redactor, descriptors=aws_settings().on_lambda):
        return _with_timeout(lambda: attempt_leaf(leaf, name), task_timeout(task), name, grace)


def _carry_generated(run: TaskRun, prepared: PreparedTask, services: Services) -> TaskOutcome:
    """A generated task carried to its outcome, its whole error policy included, by the
    runtime's `carry_task` as on the engine: a dynamic_task_group's task exists only once it
    is generated, so the state machine cannot hold its policy in Retry and Catch rules. Under
    `abort_pipeline` its failure fails the function (and so its group), as it fails the
    group on the engine."""

    async def attempt(task: TaskBase) -> Any:
        return _attempt(task, prepared, services)

    try:
        return asyncio.run(carry_task(run, attempt, asyncio.sleep))
    except PipelineAborted as aborted:
        error = aborted.outcome.error or ErrorInfo("TaskFailed", "failed")
        raise task_failure(TaskError(error.type, error.message), prepared.run.redactor) from None


def run_task_event(
    event: TaskEvent,
    services: Services | None = None,
    stores: Stores | None = None,
    *,
    sealer: Sealer | None = None,
    time_left: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Run one attempt of a leaf task: `{"status": "succeeded"|"cached", "output": ...}`; a
    generated task (`spec`) is carried to its outcome instead (`_carry_generated`), any status.
    `time_left`: seconds the invocation has left (from the Lambda context), which bound a wait
    for a provider's Retry-After (`_wait_out_retry_after`).

    Its cache entry is read first, as `runtime.task.TaskRun.start` does for the engine (its
    condition was decided before the state machine called this); a fallback task has no cache
    entry (as on the engine). A failed attempt raises a `TaskFailure` named after its error type.

    The output goes into the execution state in S3 when above the call's inline limit
    (`task_scope.limit_of`, `payloads.offload`), a cached one too.
    """
    if is_reference(event.spec):
        # a generated task's spec may have travelled as a reference to S3 (the `expand` action)
        event = event.model_copy(update={"spec": resolve(event.spec)})
    location = event_location(event, event.task)
    settings = lambda_settings()
    pipeline = location.plan.pipeline
    stores = stores or open_stores(settings, pipeline.state_management.storage_backend)
    prepared = prepare_task(event, location, stores, sealer)
    redactor = prepared.run.redactor
    if event.spec is not None:
        # a generated task sees the outputs of the tasks generated before it, as on the engine
        earlier = generated_outputs(stores, prepared.run.run_id, event.task).value or {}
        prepared.scope.outputs.update(resolve(earlier))
    services = services or default_services(settings)
    run = TaskRun(
        location.task,
        location.name,
        prepared.scope,
        pipeline=pipeline,
        pipeline_id=location.plan.pipeline_id,
        policy=effective_policy(location.task, pipeline),
        reads=location.reads,
        cache=stores.cache,
        no_cache=event.run.no_cache,
        default_model=services.settings.default_model,
        redactor=redactor,
        place=_place(event, location, prepared, stores),
        top=None if event.pipeline == event.run.pipeline else load_plan(event.run.pipeline).pipeline,
    )
    bucket = aws_settings().payload_bucket

    def kept(value: Any) -> Any:
        return offload(value, prepared.run.run_id, location.name, bucket, limit=prepared.inline_limit)

    if event.spec is not None:
        outcome = _carry_generated(run, prepared, services)
        output = kept(outcome.output)
        if event.mark_degraded and outcome.status is TaskStatus.FAILED:  # in a child execution
            from orchestrator.aws.dispatch import mark_degraded

            mark_degraded(stores, event.run.id)
        # (as it travels: the tasks after it resolve it, as they resolve outputs in the state)
        record_generated_output(stores, prepared.run.run_id, event.task, location.name, output)
        return {"status": outcome.status.value, "output": output}
    try:
        if not location.fallback:
            early = run.start(check_condition=False)
            if early is not None:
                return _advanced(
                    event, {"status": early.status.value, "output": kept(early.output)}, stores, sealer
                )
        with run.attempting(location.task, fallback=location.fallback):
            output = _attempt(location.task, prepared, services)
    except TaskError as error:
        if not location.fallback:
            _wait_out_retry_after(run, error, event.retries + 1, time_left)
        raise task_failure(error, redactor) from None
    if not location.fallback:
        run.succeeded(output, 1)
    return _advanced(event, {"status": "succeeded", "output": kept(output)}, stores, sealer)


def _wait_out_retry_after(
    run: TaskRun, error: TaskError, attempts: int, time_left: Callable[[], float] | None
) -> None:
    """Before attempt number `attempts` fails with `error`: sleep what its Retry-After asks for
    beyond the state machine's next wait, leaving the invocation `_ANSWER_MARGIN` to fail in."""
    wait = run.unscheduled_wait(error, attempts)
    if time_left is not None:
        wait = min(wait, time_left() - _ANSWER_MARGIN)
    if wait > 0:
        time.sleep(wait)


def _place(event: TaskEvent, location: TaskLocation, prepared: PreparedTask, stores: Stores) -> TaskPlace:
    """Where the attempt is recorded: under the top run, its child pipeline's id if it runs in
    one, at the path the engine gives the task (`runtime.telemetry`: the loops' names and
    indices come with the rebuilt scope; a generated task is keyed by its own name)."""
    place = prepared.scope.place
    if location.group is not None:
        place = (*place, location.group, GENERATED)
    pipeline_run = event.pipeline if event.pipeline != event.run.pipeline else ""
    return TaskPlace(stores.telemetry, event.run.id, pipeline_run, task_path(place, location.name))


def _advanced(
    event: TaskEvent, record: dict[str, Any], stores: Stores, sealer: Sealer | None
) -> dict[str, Any]:
    """The task's record, with the step of the while_loop it ends (`event.advance`) taken by the
    dispatch function's own `while` action, its output as the iteration's last; with the other
    outputs of the body it ends handed back (`event.collect`), as they are."""
    if event.collect is not None:
        record = {**record, "collected": event.collect}
    if event.advance is None:
        return record
    from orchestrator.aws.dispatch import dispatch  # (the dispatch function's; imported when used)

    step = DispatchEvent(
        pipeline=event.pipeline,
        task=event.advance.task,
        action="while",
        inputs=event.inputs,
        run=event.run,
        tasks=event.advance.tasks,
        loop=event.loop,
        last=record["output"],
        state_budget=event.state_budget,
    )
    return {**record, "advance": dispatch(step, stores, sealer=sealer)}


GENERATED_TTL = 7 * 24 * 3600


def generated_outputs(stores: Stores, run_id: str, group: str) -> Versioned:
    """Outputs of the tasks a dynamic_task_group generated so far in this run, by name.

    A Map iteration cannot see another's result, so generated tasks leave theirs in the
    state store (run-scoped) for the ones after them, which is what `parallel: false` promises.
    """
    return stores.state.read(f"run:{run_id}:generated", group)


def record_generated_output(stores: Stores, run_id: str, group: str, name: str, output: Any) -> None:
    for _ in range(50):
        current = generated_outputs(stores, run_id, group)
        merged = {**(current.value or {}), name: output}
        written = stores.state.compare_and_set(
            f"run:{run_id}:generated", group, merged, current.version, ttl=GENERATED_TTL
        )
        if written is not None:
            return
        time.sleep(random.uniform(0, 0.01))
    raise TaskError("StateConflict", f"could not record the output of generated task '{name}'")
