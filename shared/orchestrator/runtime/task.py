"""What one task means, from ready to its final outcome, written once for both drivers.

A task that is ready (its dependencies have finished) goes through these steps:

1. its `condition`: false gives `skipped`; one that cannot be evaluated is a `TemplateError`
   failure before any attempt (attempts 0);
2. its cache entry: a hit gives `cached`;
3. attempts under its error policy: a retryable error is tried again after the policy's delay
   (or the provider's ``Retry-After``, when it asks for longer: `TaskRun.retry_delay`), up to
   `retry_count` times; then the `fallback` task, once; a success is written to the cache;
4. `on_failure` when all that is spent (`on_failure`): `abort_pipeline` raises `PipelineAborted`,
   `skip` gives `skipped`, `continue_with_degraded_service` gives `failed` (the run goes on,
   degraded), both with the `fallback_value` as output.

`carry_task` runs all four for the embedded engine, which only says how to run one attempt.
On AWS the state machine carries the policy (its `Retry` and `Catch` come from the same
`ErrorPolicy`): a task Lambda runs steps 1-3 for one attempt (`TaskRun.start`, `attempt_leaf`,
`TaskRun.succeeded`) and the dispatch Lambda computes step 4's record (`failure_outcome`); the
state machine's waits are fixed in its definition, so a task Lambda waits the rest of a
``Retry-After`` itself before failing (`TaskRun.unscheduled_wait`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from orchestrator.errors import OrchestratorError, TaskError
from orchestrator.runtime.budget import covered, covering
from orchestrator.runtime.context import StateConflictError
from orchestrator.runtime.documents import ErrorInfo, TaskOutcome, TaskStatus
from orchestrator.runtime.leaf import LEAF_TYPES, cache_key, fallback_output
from orchestrator.runtime.policy import MAX_RETRY_AFTER, ErrorPolicy
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.runtime.telemetry import TaskPlace, recorded_attempt
from orchestrator.spec.models import Pipeline, TaskBase, WhileLoop
from orchestrator.stores.base import CacheStore
from orchestrator.template import jinja

CONFLICT_RERUNS = 50
"""How often an attempt that lost a state compare-and-set runs again (not counted as a retry)."""


class PipelineAborted(Exception):
    """A task failed under `on_failure: abort_pipeline`: the run stops. Drivers unwind the
    bodies around the task and record what each of them had done (`body_outcomes`)."""

    def __init__(self, task: str, outcome: TaskOutcome) -> None:
        super().__init__(task)
        self.task = task
        self.outcome = outcome
        self.body_outcomes: dict[str, TaskOutcome] = {}


def condition_holds(condition: str | bool | None, scope: Scope) -> bool:
    """A `condition` (or a while_loop's) evaluated; one that cannot be is a `TemplateError`."""
    try:
        return jinja.evaluate_condition(condition, scope)
    except OrchestratorError as error:
        raise TaskError("TemplateError", str(error)) from None


def timeout_error(name: str, timeout: float) -> TaskError:
    """What an attempt that outlived its task's timeout fails with, on both engines."""
    return TaskError("TaskTimeout", f"task '{name}' exceeded its timeout of {timeout:g}s")


def attempt_leaf(execute: Callable[[], Any], name: str) -> Any:
    """One attempt of a leaf task (`execute` runs it). An attempt whose state commit lost a
    compare-and-set to a concurrent writer (nothing of it was written: `Context.commit`) runs
    again, after a short random pause, without counting as a retry; the task's timeout covers
    the attempt with its re-runs."""
    for rerun in range(CONFLICT_RERUNS):
        try:
            return execute()
        except StateConflictError:
            time.sleep(random.uniform(0, 0.005 * (rerun + 1)))
    raise TaskError("StateConflict", f"task '{name}' kept conflicting with concurrent writers")


def failure_outcome(
    policy: ErrorPolicy, scope: Scope, error: ErrorInfo, attempts: int, redactor: Redactor
) -> TaskOutcome:
    """The outcome of a task whose attempts and fallback failed, under `on_failure: skip` or
    `continue_with_degraded_service`: `skipped` or `failed`, with its `fallback_value` as
    output (see `fallback_output` for one that cannot be rendered)."""
    output, message = fallback_output(policy.fallback_value, scope, error.message)
    if message != error.message:
        error = ErrorInfo(error.type, redactor.text(message))
    status = TaskStatus.SKIPPED if policy.on_failure == "skip" else TaskStatus.FAILED
    return TaskOutcome(status, output, attempts, error)


@contextlib.contextmanager
def _both(
    first: contextlib.AbstractContextManager[None], second: contextlib.AbstractContextManager[None]
) -> Iterator[None]:
    with first, second:
        yield


class TaskRun:
    """One task on its way to an outcome: the steps around its attempts (see the module)."""

    __slots__ = (
        "_entry",
        "cache",
        "default_model",
        "name",
        "no_cache",
        "pipeline",
        "pipeline_id",
        "place",
        "policy",
        "reads",
        "redactor",
        "scope",
        "started",
        "task",
        "top",
    )

    def __init__(
        self,
        task: TaskBase,
        name: str,
        scope: Scope,
        *,
        pipeline: Pipeline,
        pipeline_id: str,
        policy: ErrorPolicy,
        reads: frozenset[str],
        cache: CacheStore,
        no_cache: bool,
        default_model: str,
        redactor: Redactor,
        place: TaskPlace | None = None,
        top: Pipeline | None = None,
    ) -> None:
        self.task = task
        self.top = top  # the top pipeline, when this task runs in a child pipeline
        self.place = place
        self.name = name
        self.scope = scope
        self.pipeline = pipeline
        self.pipeline_id = pipeline_id
        self.policy = policy
        self.reads = reads
        self.cache = cache
        self.no_cache = no_cache
        self.default_model = default_model
        self.redactor = redactor
        self.started = time.perf_counter()
        self._entry: tuple[str, float | None] | None = None

    def start(self, *, check_condition: bool = True) -> TaskOutcome | None:
        """Steps 1 and 2: `skipped` (a false condition) or `cached`, or None: attempt it.
        A condition or cache key that cannot be rendered raises `TaskError`."""
        task = self.task
        checked = check_condition and not isinstance(task, WhileLoop) and task.condition is not None
        if checked and not condition_holds(task.condition, self.scope):
            return self._ended(TaskOutcome(TaskStatus.SKIPPED))
        self._entry = cache_key(
            task,
            self.name,
            self.scope,
            self.pipeline,
            self.pipeline_id,
            self.reads,
            self.default_model,
            self.redactor,
        )
        if self._entry is not None and not self.no_cache:
            hit, value = self.cache.get(self._entry[0])
            if hit:
                return self._ended(TaskOutcome(TaskStatus.CACHED, value))
        return None

    def attempting(self, task: TaskBase, *, fallback: bool) -> contextlib.AbstractContextManager[None]:
        """Around one attempt of `task` (this task, or its `fallback` task): a leaf's attempt
        is recorded in the run's telemetry (`runtime.telemetry`) when the run records it
        (`place`), and its calls are counted in the budgets covering it (`runtime.budget`).
        A container's attempts are not: its span is that of what runs inside it."""
        if self.place is None or not isinstance(task, LEAF_TYPES):
            return contextlib.nullcontext()
        budgets = covering(task, self.place, self.pipeline, self.top, fallback=fallback)
        return _both(covered(budgets), recorded_attempt(self.place, self.redactor, fallback=fallback))

    def succeeded(self, output: Any, attempts: int) -> TaskOutcome:
        """An attempt gave `output`: written to the cache when the task is cached."""
        if self._entry is not None:
            self.cache.put(self._entry[0], self.redactor.value(output), self._entry[1])
        return self._ended(TaskOutcome(TaskStatus.SUCCEEDED, output, attempts))

    def retry_delay(self, error: TaskError, attempts: int) -> float | None:
        """Seconds before the next attempt after attempt number `attempts` failed with
        `error`, or None when there is none (not retryable, or no retries left): the policy's
        delay, or the provider's ``Retry-After`` (at most `MAX_RETRY_AFTER`) when longer."""
        if error.retryable and attempts <= self.policy.retry_count:
            asked = min(error.retry_after or 0.0, MAX_RETRY_AFTER)
            return max(self.policy.delay_before(attempts), asked)
        return None

    def unscheduled_wait(self, error: TaskError, attempts: int) -> float:
        """On AWS: the part of `retry_delay` that the state machine's Retry rule does not wait
        (its interval before the next attempt is fixed in the definition), which the task
        function waits before failing attempt number `attempts`; 0 when there is none."""
        delay = self.retry_delay(error, attempts)
        if delay is None:
            return 0.0
        return max(0.0, delay - self.policy.state_machine_delay(attempts))

    def fell_back(self, output: Any, attempts: int) -> TaskOutcome:
        """The fallback task gave `output` after the task's attempts failed."""
        return self._ended(TaskOutcome(TaskStatus.FALLBACK, output, attempts))

    def failed(self, error: ErrorInfo, attempts: int) -> TaskOutcome:
        """Step 4: `on_failure`, once attempts and fallback are spent."""
        outcome = TaskOutcome(TaskStatus.FAILED, None, attempts, error)
        if self.policy.on_failure == "abort_pipeline":
            raise PipelineAborted(self.name, self._ended(outcome))
        return self._ended(failure_outcome(self.policy, self.scope, error, attempts, self.redactor))

    def _ended(self, outcome: TaskOutcome) -> TaskOutcome:
        outcome.duration = time.perf_counter() - self.started
        return outcome


async def carry_task(
    run: TaskRun,
    attempt: Callable[[TaskBase], Awaitable[Any]],
    sleep: Callable[[float], Awaitable[Any]],
) -> TaskOutcome:
    """Carry a ready task to its outcome (every step of the module's list). `attempt(task)`
    runs one attempt of the task, or of its `fallback` task, and raises `TaskError` when it
    fails; `sleep` waits between retries. Raises `PipelineAborted` under `abort_pipeline`."""
    try:
        early = run.start()
    except TaskError as error:
        return run.failed(ErrorInfo(error.error_type, run.redactor.text(error.message)), 0)
    if early is not None:
        return early
    attempts = 0
    while True:
        attempts += 1
        try:
            with run.attempting(run.task, fallback=False):
                output = await attempt(run.task)
        except TaskError as error:
            delay = run.retry_delay(error, attempts)
            if delay is not None:
                await sleep(delay)
                continue
            failure = ErrorInfo(error.error_type, run.redactor.text(error.message))
            break
        return run.succeeded(output, attempts)
    fallback = run.policy.fallback
    if fallback is not None:
        try:
            with run.attempting(fallback, fallback=True):
                output = await attempt(fallback)
        except TaskError:
            pass
        else:
            return run.fell_back(output, attempts)
    return run.failed(failure, attempts)
