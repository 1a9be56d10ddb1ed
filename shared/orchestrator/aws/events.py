"""What a task or dispatch Lambda is sent (pydantic models of its event) and what it raises.

The state machine (see `docs/aws.md`) sends each Lambda a small payload: the pipeline id, the
dotted reference of a task in its file (`tasks.1.tasks.0`, `tasks.3.error_handling.fallback`),
the run's inputs and ids, the outputs the task reads (`outputs`, or every record under
`tasks`) and, inside a loop, the iteration (`loop`).

A failed attempt raises an exception whose *class name* is the task's error type
(`ValueError`, `TemplateError`, ...): Lambda reports it as `errorType`, which is what the
state machine's `Retry` and `Catch` rules match. Its message is redacted.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import OrchestratorError, TaskError
from orchestrator.runtime.redact import Redactor


class DispatchError(OrchestratorError):
    """A dispatch payload asks for something its task cannot give (a compiler/runtime mismatch)."""


class TaskFailure(Exception):
    """Base of what a task or dispatch Lambda raises; the subclass's name is the error type."""


@functools.lru_cache(maxsize=512)
def error_class(error_type: str) -> type[TaskFailure]:
    """The exception class named `error_type` (one per name and process), for Retry/Catch."""
    return type(error_type, (TaskFailure,), {"__module__": __name__})


def task_failure(error: TaskError, redactor: Redactor) -> TaskFailure:
    """The exception to raise for a failed attempt: class named by its type, message redacted."""
    return error_class(error.error_type)(redactor.text(error.message))


class RunModel(BaseModel):
    """`$.run`: which run this is. `user_id` and `no_cache` are set by the trigger when known;
    `inline_limit` by the dispatch function for the iterations of a loop (or a dynamic group's
    tasks): the bytes a value may take in their states (`state_budget`). Other keys are kept,
    so a run handed on to iterations is the run it was."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    id: str
    pipeline: str
    started_at: str
    user_id: str | None = None
    no_cache: bool = False
    inline_limit: int | None = None


class LoopModel(BaseModel):
    """`$.loop` inside a loop body: the item (for_loop) or the state (while_loop) and the index."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    item: Any = None
    index: int = 0
    state: dict[str, Any] | None = None
    item_variable: str | None = None
    # the number of iterations, when the state machine counts them itself (a for_loop over an
    # array input, read in place): the iterations divide their share of the state by it
    count: int | None = None
    # the iteration of the loop around this one, when loops nest: its variables are seen too
    outer: LoopModel | None = None


class EventBase(BaseModel):
    # each function validates one kind of event: only its validator is built, at the first one
    model_config = ConfigDict(extra="forbid", defer_build=True)

    pipeline: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    run: RunModel
    outputs: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, Any] = Field(default_factory=dict)
    loop: LoopModel | None = None
    spec: dict[str, Any] | None = None
    name: str | None = None
    # the compiler's budget for values in the state (`state_budget.STATE_BUDGET`), given to the
    # calls that put values into the state; `items` and `expand` then answer the iterations' run
    state_budget: int | None = None
    # a call in a distributed for_loop's child execution, whose history the run document does
    # not read: a task degraded there notes that the run is degraded (`dispatch.mark_degraded`)
    mark_degraded: bool = False


class AdvanceModel(BaseModel):
    """A while_loop whose iterations this task ends (`task`: the loop's reference): once the task
    has its output, its function also takes the loop's step, as the dispatch function's `while`
    action would with that output as `last`, saving the state machine a call. `tasks` are the
    records the loop's condition may read."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    task: str
    tasks: dict[str, Any] = Field(default_factory=dict)


class TaskEvent(EventBase):
    """Payload of a task function: one attempt of the task at `task` (or of the inline `spec`).

    `outputs` maps the names the task reads to their outputs; `tasks` may instead carry whole
    records (`{"status", "output", "children"?}`) from which outputs are taken. The task's
    condition was decided before (by a Choice rule or the dispatch function's `condition`).
    `spec` is a generated task (a `dynamic_task_group`'s), given inline; `task` then names the
    group and `name` (or the spec's own name) the generated task.

    `collect`: the outputs of the other tasks of the body this task ends (a loop iteration, a
    child pipeline), handed back as they are with its record (`collected`), so that its state
    writes the body's `{task: output}` itself (`asl._collect_in_leaf`).
    """

    task: str
    advance: AdvanceModel | None = None
    collect: dict[str, Any] | None = None
    # the state's `$$.State.RetryCount`, given to a task that may wait out a provider's
    # Retry-After (`asl.RETRY_AFTER_TYPES`): this is attempt number `retries + 1`
    retries: int = 0


class DispatchEvent(EventBase):
    """Payload of the dispatch function: evaluate what ASL cannot (see `dispatch`)."""

    action: Literal[
        "condition",
        "items",
        "render",
        "while",
        "expand",
        "child_inputs",
        "child_failed",
        "outputs",
        "collect",
    ]
    task: str | None = None
    field: str | None = None  # render
    child: int | None = None  # child_inputs, child_failed
    failed_task: str | None = None  # child_failed: the child's top-level task that failed
    last: Any = None  # while: the last body task's output (absent before the first iteration)
    error: Any = None  # render (passed through), child_failed: a Catch result
    status: str | None = None  # render: the status to report, passed through
    # items: the most iterations that run inline, more as a Distributed Map (-1: never inline)
    inline_up_to: int | None = None
    manifest: dict[str, Any] | None = None  # collect: where the Distributed Map wrote its results
    # expand: the function that runs each generated task type, which each spec is given (by type)
    functions: dict[str, str] | None = None
