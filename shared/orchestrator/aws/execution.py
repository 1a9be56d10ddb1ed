"""A Step Functions execution -> the run document of SPEC section 11, as the local engine gives it.

Statuses, outputs and errors come from the execution's output (`$.tasks`; a failed execution
has none: the records its states output); attempts from the history (how many times each task's
state scheduled its Lambda); the run's error from the `ExecutionFailed` event and the failed
task that gave it (a timed-out execution is the pipeline's `PipelineTimeout`, every top-level
task cancelled). Top-level tasks may run side by side (`top_level_task`). A state whose name
the compiler shortened (over 80 characters) is read by the name it stands for.
`HistoryProgress` tells an observer (the CLI's progress lines) about top-level tasks from the
same history, event by event.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from orchestrator.aws.asl import DEGRADED_ROLE, shortened_state_names
from orchestrator.aws.payloads import resolve
from orchestrator.aws.state_records import task_records
from orchestrator.plan import Plan
from orchestrator.runtime.documents import ErrorInfo, RunStatus, TaskOutcome, TaskStatus, run_document
from orchestrator.runtime.pipelines import pipeline_timeout
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


def top_level_task(state_name: str, tasks: Collection[str]) -> str | None:
    """The top-level task (one of `tasks`) a state belongs to, if any. Its states are named
    `task` or `task.role`, at the top of the definition or in a branch of a Parallel state the
    compiler makes for tasks that run side by side (named like the compiler's own states, with
    a dot first: `.parallel1`, which belong to no task); a task's inner states are `task/...`."""
    if "/" in state_name:
        return None
    task = task_of_state(state_name)
    return task if task in tasks else None


def with_full_state_name(event: dict[str, Any], long_names: dict[str, str]) -> dict[str, Any]:
    """`event` naming its state by the name a shortened one stands for (`long_names`, from
    `asl.shortened_state_names`): `group/child`, whatever their length."""
    for key in ("stateEnteredEventDetails", "stateExitedEventDetails"):
        details = event.get(key)
        if details is not None and details["name"] in long_names:
            event = {**event, key: {**details, "name": long_names[details["name"]]}}
    return event


LAMBDA_ATTEMPTS = frozenset({"TaskScheduled", "LambdaFunctionScheduled"})
CONTAINER_ATTEMPTS = frozenset({"MapStateStarted", "ParallelStateStarted"})
CONTAINER_ENTRIES = frozenset({"MapStateEntered", "ParallelStateEntered"})
CONTAINER_ENDS = frozenset(
    {
        "MapStateExited",
        "MapStateFailed",
        "MapStateAborted",
        "ParallelStateExited",
        "ParallelStateFailed",
        "ParallelStateAborted",
    }
)


class AttemptCounter:
    """How many attempts each state made (retries included): Lambda calls, Map and Parallel
    runs (and a for_loop's Choice between two Maps entered: `asl._attempt_state`), from history
    events told one by one in the order they were recorded. Each attempt is
    the state's that its chain of events (`previousEventId`, one chain per Parallel branch and
    Map iteration) leads back to, so states that run side by side are counted apart."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._current: dict[int, str] = {}
        self._by_id: dict[int, dict[str, Any]] = {}

    def add(self, event: dict[str, Any]) -> None:
        self._by_id[event["id"]] = event
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            self._current[event["id"]] = name
            # a Choice named as its task chooses the Map that runs a for_loop without error
            # handling of its own (never retried): entering it is the loop's attempt
            self.counts[name] += 1 if kind == "ChoiceStateEntered" else 0
        elif kind in LAMBDA_ATTEMPTS or kind in CONTAINER_ATTEMPTS:
            if kind in LAMBDA_ATTEMPTS:
                entered = _entered_state(event, self._by_id, self._current)
            else:
                entered = _container_state(event, self._by_id)
            if entered is not None:
                self.counts[entered] += 1
        elif kind == "TaskFailed" and event["taskFailedEventDetails"].get("error", "").startswith("Lambda."):
            # the Lambda service refused the call (throttled, unavailable): the task never ran
            entered = _entered_state(event, self._by_id, self._current)
            if entered is not None:
                self.counts[entered] -= 1


def scheduled_counts(history: list[dict[str, Any]]) -> Counter[str]:
    """How many attempts each state made (retries included): Lambda calls, Map and Parallel runs."""
    counter = AttemptCounter()
    for event in history:
        counter.add(event)
    return counter.counts


def _entered_state(
    event: dict[str, Any], by_id: dict[int, dict[str, Any]], current: dict[int, str]
) -> str | None:
    previous = event.get("previousEventId")
    while previous:
        if previous in current:
            return current[previous]
        previous = by_id.get(previous, {}).get("previousEventId")
    return None


def _container_state(event: dict[str, Any], by_id: dict[int, dict[str, Any]]) -> str | None:
    """The Map or Parallel state that an attempt (`MapStateStarted`, `ParallelStateStarted`)
    belongs to. A retry's start follows the failed attempt, whose own Map and Parallel states
    have entries too: walking back, each of those that ended (exited, failed or aborted; a
    caught failure is a failure then an exit) is stepped over up to its entry, and the first
    entry not stepped over is the container's."""
    ended = 0
    later = ""
    previous = event.get("previousEventId")
    while previous and previous in by_id:
        found = by_id[previous]
        kind = found["type"]
        if kind in CONTAINER_ENTRIES:
            if not ended:
                return str(found["stateEnteredEventDetails"]["name"])
            ended -= 1
        elif kind in CONTAINER_ENDS:
            exited_after_failing = kind.endswith("Failed") and later == kind.removesuffix("Failed") + "Exited"
            ended += 0 if exited_after_failing else 1  # (that exit was stepped over already)
        later = kind
        previous = found.get("previousEventId")
    return None


def _entered_degraded_state(history: list[dict[str, Any]]) -> bool:
    """Whether a task failed under `continue_with_degraded_service` anywhere, the run document
    listing it or not (a loop body, a child pipeline, a generated task): each goes through a
    state of the role `asl.DEGRADED_ROLE`, or (a generated task, whose function carries its
    policy) its task function answered a `failed` record, or (in a distributed for_loop's
    child execution) the loop's `collect` call answered `degraded`."""
    suffix = "." + DEGRADED_ROLE
    by_id = {event.get("id"): event for event in history}
    for event in history:
        if "stateEnteredEventDetails" in event:
            if str(event["stateEnteredEventDetails"]["name"]).endswith(suffix):
                return True
        elif event.get("type") == "TaskSucceeded":
            output = (event.get("taskSucceededEventDetails") or {}).get("output")
            if _answered_failed(output) and not _is_dispatch_call(event, by_id):
                return True
            if _answered_degraded(output):
                return True
    return False


def _answered_degraded(output: Any) -> bool:
    """Whether a Lambda call's result says the run is degraded: the `collect` call of a
    distributed for_loop, when a task was degraded in a child execution (whose history is
    not this one)."""
    payload = _answer(output, '"degraded"')
    return payload is not None and payload.get("degraded") is True


def _answered_failed(output: Any) -> bool:
    """Whether a Lambda call's result is a record whose status is `failed`."""
    payload = _answer(output, '"failed"')
    return payload is not None and payload.get("status") == "failed"


def _answer(output: Any, holding: str) -> dict[str, Any] | None:
    """A Lambda call's result (`TaskSucceeded` output), when its text holds `holding` (parsed
    only then: most results do not) and its payload is a mapping."""
    if not isinstance(output, str) or holding not in output:
        return None
    try:
        payload = json.loads(output).get("Payload")
    except (ValueError, AttributeError):
        return None
    return payload if isinstance(payload, dict) else None


def _is_dispatch_call(event: dict[str, Any], by_id: dict[Any, dict[str, Any]]) -> bool:
    """Whether the call an event answers was to the dispatch function (its payload names an
    `action`; a task function's never does)."""
    scheduled: dict[str, Any] | None = event
    while scheduled is not None and scheduled.get("type") != "TaskScheduled":
        scheduled = by_id.get(scheduled.get("previousEventId"))
    if scheduled is None:
        return False
    try:
        parameters = json.loads(scheduled["taskScheduledEventDetails"]["parameters"])
    except (KeyError, ValueError, TypeError):
        return False
    payload = parameters.get("Payload") if isinstance(parameters, dict) else None
    return isinstance(payload, dict) and "action" in payload


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
    *,
    payloads: Any = None,
) -> dict[str, Any]:
    """The run document of one execution of `plan`'s state machine. `output` has its values
    kept in S3 read back already; those of records read from the history are read with
    `payloads` (an S3 client, or a `payloads.Snapshot`; by default the account's S3)."""
    long_names = shortened_state_names(plan)
    history = [with_full_state_name(event, long_names) for event in history]
    tasks = task_records((output or {}).get("tasks") or {}) or last_known_tasks(history)
    counts = scheduled_counts(history)
    error = _run_error(history, execution_status) if execution_status != "SUCCEEDED" else None
    failed_task = error.get("task") if error else None
    outcomes: dict[str, TaskOutcome] = {}
    failed_groups_children: set[str] = set()  # their failure is their group's, not the run's
    for name, node in plan.body.nodes.items():
        record = tasks.get(name)
        outcomes[name] = _outcome(record, counts.get(name, 0))
        if isinstance(node.task, ParallelGroup):
            children = [child.name for child in node.task.tasks if child.name]
            group_error = outcomes[name].error
            if error and failed_task == name:
                group_error = ErrorInfo(str(error["type"]), str(error["message"]))
            found, failing = _group_children(history, name, children, record, group_error, payloads)
            outcomes |= found
            failed_groups_children |= {failing} if failing else set()
    status = RunStatus.SUCCEEDED
    if execution_status == "TIMED_OUT":
        # the pipeline's timeout (the definition's TimeoutSeconds) fired: as on the engine,
        # every top-level task is cancelled, a group that had finished keeps its children
        status = RunStatus.FAILED
        error = pipeline_timeout(plan.pipeline.resource_limits.timeout or 0)
        for name, node in plan.body.nodes.items():
            outcomes[name] = TaskOutcome(TaskStatus.CANCELLED)
            if isinstance(node.task, ParallelGroup) and "children" not in (tasks.get(name) or {}):
                outcomes |= {
                    child.name: TaskOutcome(TaskStatus.NOT_RUN) for child in node.task.tasks if child.name
                }
    elif execution_status != "SUCCEEDED":
        status = RunStatus.FAILED
        if failed_task in outcomes:
            failure = outcomes[failed_task]
            failure.status = TaskStatus.FAILED
            failure.attempts = max(failure.attempts, counts.get(failed_task, 0))
            failure.error = ErrorInfo(str(error["type"]), str(error["message"])) if error else None
        for name, outcome in outcomes.items():
            if outcome.status is TaskStatus.NOT_RUN and counts.get(name):
                outcome.status = TaskStatus.CANCELLED
    elif _entered_degraded_state(history) or any(
        outcome.status is TaskStatus.FAILED and name not in failed_groups_children
        for name, outcome in outcomes.items()
    ):
        status = RunStatus.DEGRADED
    return run_document(
        run_id=run_id,
        pipeline=plan.pipeline_id,
        status=status,
        outcomes=outcomes,
        result=result if status is not RunStatus.FAILED else None,
        error=error,
    )


def _group_children(
    history: list[dict[str, Any]],
    group: str,
    children: list[str],
    record: dict[str, Any] | None,
    error: ErrorInfo | None,
    payloads: Any = None,
) -> tuple[dict[str, TaskOutcome], str | None]:
    """The outcomes of a parallel group's children in its last attempt, as the embedded engine
    gives them, and the child whose failure failed the group (if it failed): from the group's
    record, or, when the group failed (its record then has no children), from the history. Then
    the failing child has failed with the group's error; the others finished (their last
    record), were cancelled while running, or never started (not run)."""
    attempt = _last_attempt(history, group)
    counts = scheduled_counts(attempt)
    if (record is not None and "children" in record) or not attempt:
        found = (record or {}).get("children") or {}
        return {
            child: _outcome(found.get(child), counts.get(f"{group}/{child}", 0)) for child in children
        }, None
    failing = _failing_child(history, attempt, group, children)
    outcomes: dict[str, TaskOutcome] = {}
    for child in children:
        attempts = counts.get(f"{group}/{child}", 0)
        if child == failing:
            outcomes[child] = TaskOutcome(TaskStatus.FAILED, None, attempts, error)
            continue
        entered = False
        finished: dict[str, Any] | None = None
        for event in attempt:
            details = event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails")
            if details is None or _child_of(group, details["name"], children) != child:
                continue
            entered = True
            if event["type"].endswith("StateExited"):
                own = child if "/" not in details["name"].removeprefix(group + "/") else None
                finished = _records_in(_output_of(details), own).get(child) or finished
        if finished is not None:  # (its values kept in S3 read back: `payloads`)
            outcomes[child] = _outcome(resolve(finished, client=payloads), attempts)
        else:
            outcomes[child] = TaskOutcome(TaskStatus.CANCELLED if entered else TaskStatus.NOT_RUN)
    return outcomes, failing


def _last_attempt(history: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    """The events from the last start of the Map or Parallel state `state` on (none if it never started)."""
    by_id = {event["id"]: event for event in history}
    starts = [
        event["id"]
        for event in history
        if event["type"] in CONTAINER_ATTEMPTS and _container_state(event, by_id) == state
    ]
    return [event for event in history if starts and event["id"] >= starts[-1]]


def _failing_child(
    history: list[dict[str, Any]], attempt: list[dict[str, Any]], group: str, children: list[str]
) -> str | None:
    """The child whose failure failed the group in its last attempt: the one the group's
    failure event follows."""
    by_id = {event["id"]: event for event in history}
    for event in reversed(attempt):
        if event["type"] == "ParallelStateFailed" and _container_state(event, by_id) == group:
            previous = event.get("previousEventId")
            while previous in by_id:
                details = by_id[previous].get("stateEnteredEventDetails")
                child = _child_of(group, details["name"], children) if details else None
                if child is not None:
                    return child
                previous = by_id[previous].get("previousEventId")
    return None


def _child_of(group: str, state_name: str, children: list[str]) -> str | None:
    """The child of `group` a state belongs to (`group/child`, `group/child.role`, `group/child/...`)."""
    if not state_name.startswith(group + "/"):
        return None
    rest = state_name.removeprefix(group + "/")
    child = rest.split("/", 1)[0].split(".", 1)[0]
    return child if child in children else None


_STATUSES = frozenset(status.value for status in TaskStatus)


def _is_record(value: Any) -> bool:
    """A task's record (`{"status", "output", ...}`): a container's raw result, which the task's
    last state then shapes into its record, has no status (or is a list)."""
    return isinstance(value, dict) and value.get("status") in _STATUSES


def _output_of(details: dict[str, Any]) -> Any:
    """A state's output (`stateExitedEventDetails`), parsed; None when it is not JSON."""
    try:
        return json.loads(details.get("output") or "null")
    except ValueError:
        return None


def _records_in(output: Any, own: str | None = None) -> dict[str, dict[str, Any]]:
    """The records of finished tasks that a state's output holds, by name: in its `$.tasks`
    (through `task_records`, a parallel step's records too). For a state of the task `own`, the
    output itself when it is a record: the last state of a one-task branch outputs its record
    only. The last state of a longer branch outputs its `$.tasks`: its tasks' records by name
    (and its parallel steps'), and nothing else."""
    if not isinstance(output, dict):
        return {}
    if own is not None and "tasks" not in output and _is_record(output):
        return {own: output}
    holder = output.get("tasks", output)
    if not isinstance(holder, dict):
        return {}
    every = task_records(holder)
    found = {name: record for name, record in every.items() if _is_record(record)}
    return found if "tasks" in output or len(found) == len(every) else {}


def last_known_tasks(history: list[dict[str, Any]]) -> dict[str, Any]:
    """For a failed execution (it has no output): the record of every task that had finished
    at the top level, outputs kept in S3 read back (as a succeeded execution's output is).

    Tasks that run side by side finish in different branches of a Parallel state, and a branch's
    states hold the records of its own tasks (and of those before the Parallel) only, until the
    Parallel ends: so the records are gathered from every state that exited outside any task
    (`task`, `task.role` and the compiler's own states, wherever they are), a later one winning."""
    found: dict[str, Any] = {}
    for event in history:
        details = event.get("stateExitedEventDetails")
        if details and "/" not in details["name"]:
            found |= _records_in(_output_of(details), task_of_state(details["name"]) or None)
    resolved: dict[str, Any] = resolve(found)
    return resolved


FAILURE_DETAILS = {
    "TaskFailed": "taskFailedEventDetails",
    "LambdaFunctionFailed": "lambdaFunctionFailedEventDetails",
    "TaskTimedOut": "taskTimedOutEventDetails",
}


def _run_error(history: list[dict[str, Any]], execution_status: str) -> dict[str, Any]:
    failed = next((e for e in reversed(history) if e["type"] == "ExecutionFailed"), None)
    details = (failed or {}).get("executionFailedEventDetails", {})
    failures = [e for e in reversed(history) if e["type"] in FAILURE_DETAILS]
    # with tasks side by side, the last failure recorded may be another branch's (retried, or
    # cut short by this one): the failure that failed the execution gave it its error and cause
    reported = (details.get("error"), details.get("cause"))
    failure = next((e for e in failures if _failure_of(e) == reported), failures[0] if failures else None)
    task = None
    if failure is not None:
        entered = _entered_state(
            failure,
            {e["id"]: e for e in history},
            {
                e["id"]: e["stateEnteredEventDetails"]["name"]
                for e in history
                if e["type"] == "TaskStateEntered"
            },
        )
        if entered:
            # a compiler state of the pipeline itself (`.result`, its outputs) names no task
            task = task_of_state(entered.split("/", 1)[0]) or None
    if failed is None:
        return {
            "task": task,
            "type": "Execution" + execution_status.title(),
            "message": execution_status.lower(),
        }
    info = error_from_catch({"Error": details.get("error"), "Cause": details.get("cause")})
    assert info is not None
    return {"task": task, "type": info.type, "message": info.message}


def _failure_of(event: dict[str, Any]) -> tuple[Any, Any]:
    details = event.get(FAILURE_DETAILS[event["type"]], {})
    return details.get("error"), details.get("cause")


class HistoryProgress:
    """Top-level tasks starting and finishing, told to an observer (the CLI's progress lines)
    from the history events of an execution as it records them.

    Top-level tasks may run side by side, in the branches of the Parallel states the compiler
    makes for tasks that do not depend on each other. A task starts when the execution first
    enters one of its states (`top_level_task`) and has finished once a state that exits holds
    its record (`_records_in`: its own last state's output, or the records a branch's last state
    or a parallel step holds), whatever else is running. Its outcome is read as `document_from_execution`
    reads it: that record, the attempts from the events so far. A task that never gets a record
    (the one that failed the execution, or one cancelled with it) is told by `finish`, from the
    run document.
    """

    def __init__(self, plan: Plan, observer: Observer) -> None:
        self._tasks = frozenset(plan.body.nodes)
        self._long_names = shortened_state_names(plan)
        self._observer = observer
        self._lock = threading.Lock()
        self._attempts = AttemptCounter()
        self._started: set[str] = set()
        self._unfinished: list[str] = []  # started, not told finished, in the order they started

    def event(self, event: dict[str, Any]) -> None:
        """One history event (as `GetExecutionHistory` gives it), in the order they are recorded."""
        with self._lock:
            event = with_full_state_name(event, self._long_names)
            self._attempts.add(event)
            entered = event.get("stateEnteredEventDetails")
            if entered is not None:
                task = top_level_task(entered["name"], self._tasks)
                if task is not None and task not in self._started:
                    self._started.add(task)
                    self._unfinished.append(task)
                    self._observer.task_started(task)
                return
            exited = event.get("stateExitedEventDetails")
            if exited is None or "/" in exited["name"] or not self._unfinished:
                return
            owner = top_level_task(exited["name"], self._tasks)
            if owner is not None and owner not in self._unfinished:
                return  # a state of a task told finished already
            records = _records_in(_output_of(exited), owner)
            for name in [name for name in self._unfinished if name in records]:
                self._unfinished.remove(name)
                self._observer.task_finished(
                    name, _outcome(records[name], self._attempts.counts.get(name, 0))
                )

    def finish(self, document: dict[str, Any]) -> None:
        """The execution has ended: the tasks not told finished yet, as `document` has them."""
        with self._lock:
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
