"""A Step Functions execution -> the run document of SPEC section 11, as the local engine gives it.

Statuses, outputs and errors come from the execution's output (`$.tasks`); attempts from the
history (how many times each task's state scheduled its Lambda); the run's error from the
`ExecutionFailed` event and the last failed task. `HistoryProgress` tells an observer (the
CLI's progress lines) about top-level tasks from the same history, event by event.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from orchestrator.plan import Plan
from orchestrator.runtime.documents import ErrorInfo, RunStatus, TaskOutcome, TaskStatus, run_document
from orchestrator.spec.models import ParallelGroup

if TYPE_CHECKING:
    from orchestrator.engine.local import Observer


def error_from_catch(caught: dict[str, Any] | None) -> ErrorInfo | None:
    """`{"Error", "Cause"}` as a Catch records it; a Lambda's Cause is its error payload."""
    if not caught:
        return None
    error_type = str(caught.get("Error", "TaskFailed"))
    cause = caught.get("Cause") or ""
    message = cause
    try:
        payload = json.loads(cause)
    except (TypeError, ValueError):
        payload = None
    if isinstance(payload, dict):
        message = str(payload.get("errorMessage", cause))
        error_type = str(payload.get("errorType", error_type))
    if error_type == "States.Timeout":  # the state's own limit fired: the same failure as locally
        return ErrorInfo("TaskTimeout", message or "the task exceeded its timeout")
    return ErrorInfo(error_type, message)


def task_of_state(state_name: str) -> str:
    """`with_fallback.fallback` -> `with_fallback`; `group/child` -> `child`."""
    last = state_name.rsplit("/", 1)[-1]
    return last.split(".", 1)[0]


ATTEMPT_EVENTS = frozenset(
    {"TaskScheduled", "LambdaFunctionScheduled", "MapStateStarted", "ParallelStateStarted"}
)


def scheduled_counts(history: list[dict[str, Any]]) -> Counter[str]:
    """How many attempts each state made (retries included): Lambda calls, Map and Parallel runs."""
    counts: Counter[str] = Counter()
    current: dict[int, str] = {}
    by_id = {e["id"]: e for e in history}
    for event in history:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            current[event["id"]] = name
            counts.setdefault(name, 0)
        elif kind in ATTEMPT_EVENTS:
            entered = _entered_state(event, by_id, current)
            if entered is not None:
                counts[entered] += 1
        elif kind == "TaskFailed" and event["taskFailedEventDetails"].get("error", "").startswith("Lambda."):
            # the Lambda service refused the call (throttled, unavailable): the task never ran
            entered = _entered_state(event, by_id, current)
            if entered is not None:
                counts[entered] -= 1
    return counts


def _entered_state(
    event: dict[str, Any], by_id: dict[int, dict[str, Any]], current: dict[int, str]
) -> str | None:
    previous = event.get("previousEventId")
    while previous:
        if previous in current:
            return current[previous]
        previous = by_id.get(previous, {}).get("previousEventId")
    return None


def _outcome(result: dict[str, Any] | None, attempts: int) -> TaskOutcome:
    if result is None:
        return TaskOutcome(TaskStatus.NOT_RUN)
    error = error_from_catch(result.get("error"))
    status = TaskStatus(result.get("status", "succeeded"))
    if status in {TaskStatus.SKIPPED, TaskStatus.CACHED} and error is None:
        attempts = 0  # a Lambda that only decided a condition, or found a cache hit, ran nothing
    return TaskOutcome(status, result.get("output"), attempts, error)


def document_from_execution(
    plan: Plan,
    run_id: str,
    execution_status: str,
    output: dict[str, Any] | None,
    history: list[dict[str, Any]],
    result: Any = None,
) -> dict[str, Any]:
    """The run document of one execution of `plan`'s state machine."""
    tasks = (output or {}).get("tasks") or _last_known_tasks(history)
    counts = scheduled_counts(history)
    outcomes: dict[str, TaskOutcome] = {}
    for name, node in plan.body.nodes.items():
        record = tasks.get(name)
        attempts = counts.get(name, 0)
        outcomes[name] = _outcome(record, attempts)
        if isinstance(node.task, ParallelGroup):
            children = (record or {}).get("children") or {}
            for child in node.task.tasks:
                if child.name:
                    outcomes[child.name] = _outcome(
                        children.get(child.name), counts.get(f"{name}/{child.name}", 0)
                    )
    error = None
    status = RunStatus.SUCCEEDED
    if execution_status != "SUCCEEDED":
        status = RunStatus.FAILED
        error = _run_error(history, execution_status)
        failed_task = error.get("task") if error else None
        if failed_task in outcomes:
            failure = outcomes[failed_task]
            failure.status = TaskStatus.FAILED
            failure.attempts = max(failure.attempts, counts.get(failed_task, 0))
            failure.error = ErrorInfo(str(error["type"]), str(error["message"])) if error else None
        for name, outcome in outcomes.items():
            if outcome.status is TaskStatus.NOT_RUN and counts.get(name):
                outcome.status = TaskStatus.CANCELLED
    elif any(outcome.status is TaskStatus.FAILED for outcome in outcomes.values()):
        status = RunStatus.DEGRADED
    return run_document(
        run_id=run_id,
        pipeline=plan.pipeline_id,
        status=status,
        outcomes=outcomes,
        result=result if status is not RunStatus.FAILED else None,
        error=error,
    )


def _last_known_tasks(history: list[dict[str, Any]]) -> dict[str, Any]:
    """For a failed execution: the `$.tasks` of the last state that finished at the top level."""
    for event in reversed(history):
        details = event.get("stateExitedEventDetails")
        if details and "/" not in details["name"]:
            try:
                found = json.loads(details.get("output") or "{}").get("tasks")
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    return {}


def _run_error(history: list[dict[str, Any]], execution_status: str) -> dict[str, Any]:
    failed = next((e for e in reversed(history) if e["type"] == "ExecutionFailed"), None)
    task = None
    for event in reversed(history):
        if event["type"] in {"TaskFailed", "LambdaFunctionFailed", "TaskTimedOut"}:
            entered = _entered_state(
                event,
                {e["id"]: e for e in history},
                {
                    e["id"]: e["stateEnteredEventDetails"]["name"]
                    for e in history
                    if e["type"] == "TaskStateEntered"
                },
            )
            if entered:
                task = task_of_state(entered.split("/", 1)[0]) if "/" in entered else task_of_state(entered)
            break
    if failed is None:
        return {
            "task": task,
            "type": "Execution" + execution_status.title(),
            "message": execution_status.lower(),
        }
    details = failed.get("executionFailedEventDetails", {})
    info = error_from_catch({"Error": details.get("error"), "Cause": details.get("cause")})
    assert info is not None
    return {"task": task, "type": info.type, "message": info.message}


class HistoryProgress:
    """Top-level tasks starting and finishing, told to an observer (the CLI's progress lines)
    from the history events of an execution as it records them.

    A top-level state (no `/` in its name) belongs to the task `task_of_state(name)`, and
    top-level tasks run one after another: a task starts when the execution enters its first
    state and has finished when it enters a state of anything else, or succeeds. Its outcome is
    then read as `document_from_execution` reads it: the record in `$.tasks.<name>` of the output
    of its last state, the attempts from its events. A task without such a record (the one that
    failed the execution) is told by `finish`, from the run document.
    """

    def __init__(self, plan: Plan, observer: Observer) -> None:
        self._tasks = frozenset(plan.body.nodes)
        self._observer = observer
        self._lock = threading.Lock()
        self._current: str | None = None
        self._events: list[dict[str, Any]] = []  # the current task's, for its attempts
        self._unfinished: list[str] = []

    def event(self, event: dict[str, Any]) -> None:
        """One history event (as `GetExecutionHistory` gives it), in the order they are recorded."""
        with self._lock:
            entered = event.get("stateEnteredEventDetails")
            if entered is not None and "/" not in entered["name"]:
                task = task_of_state(entered["name"])
                if task != self._current:
                    self._leave()
                    if task in self._tasks:
                        self._current = task
                        self._unfinished.append(task)
                        self._observer.task_started(task)
            elif event["type"] == "ExecutionSucceeded":
                self._leave()
            if self._current is not None:
                self._events.append(event)

    def finish(self, document: dict[str, Any]) -> None:
        """The execution has ended: the tasks not told finished yet, as `document` has them."""
        with self._lock:
            self._current, self._events = None, []
            for name in self._unfinished:
                record = document["tasks"].get(name)
                if record is not None:
                    error = record.get("error")
                    outcome = TaskOutcome(
                        TaskStatus(record["status"]),
                        document["outputs"].get(name),
                        int(record.get("attempts", 0)),
                        ErrorInfo(str(error["type"]), str(error["message"])) if error else None,
                    )
                    self._observer.task_finished(name, outcome)
            self._unfinished = []

    def _leave(self) -> None:
        name, events = self._current, self._events
        self._current, self._events = None, []
        if name is None:
            return
        record = _last_record(events, name)
        if record is None:  # left without a result: `finish` tells it
            return
        self._unfinished.remove(name)
        self._observer.task_finished(name, _outcome(record, scheduled_counts(events).get(name, 0)))


def _last_record(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """`$.tasks.<name>` in the output of the last top-level state that exited, if there."""
    for event in reversed(events):
        details = event.get("stateExitedEventDetails")
        if details and "/" not in details["name"]:
            try:
                tasks = json.loads(details.get("output") or "{}").get("tasks")
            except (ValueError, AttributeError):
                return None
            record = tasks.get(name) if isinstance(tasks, dict) else None
            return record if isinstance(record, dict) else None
    return None
