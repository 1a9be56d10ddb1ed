"""Issue 15: a provider's Retry-After holds up the next attempt, on both engines.

On the embedded engine `carry_task` waits `TaskRun.retry_delay`: the policy's delay or the
Retry-After (capped), whichever is longer. On AWS the state machine's wait is fixed in its
Retry rule, and the task function waits `TaskRun.unscheduled_wait` before failing: the two
together are never shorter than the Retry-After, and nothing is waited when no retry is left.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import TaskError
from orchestrator.runtime.policy import MAX_RETRY_AFTER, ErrorPolicy, backoff_rate, effective_policy
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.runtime.task import TaskRun, carry_task
from orchestrator.spec.loading import parse_pipeline
from orchestrator.stores.memory import MemoryCacheStore

retry_afters = st.none() | st.floats(min_value=0, max_value=10 * MAX_RETRY_AFTER, allow_nan=False)
delays = st.floats(min_value=0, max_value=100, allow_nan=False)
rates = st.sampled_from(["fixed", "exponential", 0.5, 1.5, 3])


def task_run(retry_count: int, retry_delay: float, backoff: str | float) -> TaskRun:
    text = (
        "name: t\ntasks:\n  - name: ask\n    type: llm_task\n    prompt: hi\n"
        f"    error_handling: {{retry_count: {retry_count}, retry_delay: {retry_delay!r},"
        f" retry_backoff: {backoff}, on_failure: skip}}\n"
    )
    pipeline = parse_pipeline(text, Path("t.yaml")).pipeline
    task = pipeline.tasks[0]
    return TaskRun(
        task,
        "ask",
        Scope({}),
        pipeline=pipeline,
        pipeline_id="t",
        policy=effective_policy(task, pipeline),
        reads=frozenset(),
        cache=MemoryCacheStore(),
        no_cache=True,
        default_model="m",
        redactor=Redactor(),
    )


@settings(max_examples=50)
@given(
    retry_count=st.integers(0, 4),
    delay=delays,
    backoff=rates,
    answers=st.lists(retry_afters, min_size=1, max_size=6),
)
def test_the_engine_waits_at_least_each_retry_after(
    retry_count: int, delay: float, backoff: str | float, answers: list[float | None]
) -> None:
    # GIVEN a task whose attempts are refused, each asking for a Retry-After (or none)
    run = task_run(retry_count, delay, backoff)
    failures = iter(answers)
    waited: list[float] = []

    async def attempt(task: Any) -> Any:
        retry_after = next(failures, None)
        raise TaskError("LLMRateLimited", "HTTP 429", retry_after=retry_after)

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    # WHEN the engine carries it
    outcome = asyncio.run(carry_task(run, attempt, sleep))
    # THEN it made 1 + retry_count attempts, each retry after max(policy delay, Retry-After)
    assert outcome.attempts == retry_count + 1
    assert len(waited) == retry_count
    for number, seconds in enumerate(waited, start=1):
        asked = answers[number - 1] if number - 1 < len(answers) else None
        policy_delay = run.policy.delay_before(number)
        assert seconds == max(policy_delay, min(asked or 0.0, MAX_RETRY_AFTER))


@given(
    retry_count=st.integers(0, 4),
    delay=delays,
    backoff=rates,
    retry_after=retry_afters,
    attempt=st.integers(1, 6),
)
def test_on_aws_the_function_waits_what_the_state_machine_does_not(
    retry_count: int, delay: float, backoff: str | float, retry_after: float | None, attempt: int
) -> None:
    run = task_run(retry_count, delay, backoff)
    error = TaskError("LLMTransientError", "HTTP 503", retry_after=retry_after)
    own = run.unscheduled_wait(error, attempt)
    assert own >= 0
    if attempt > retry_count:
        assert own == 0  # no retry follows: failing at once
        return
    scheduled = run.policy.state_machine_delay(attempt)
    assert own + scheduled >= min(retry_after or 0.0, MAX_RETRY_AFTER) - 1e-9
    assert own <= max(0.0, min(retry_after or 0.0, MAX_RETRY_AFTER) - scheduled) + 1e-9


def test_a_non_retryable_error_waits_for_nothing() -> None:
    run = task_run(3, 0, "fixed")
    refused = TaskError("LLMRequestError", "HTTP 400", retry_after=30.0)
    assert run.retry_delay(refused, 1) is None
    assert run.unscheduled_wait(refused, 1) == 0


def test_the_state_machine_delay_is_the_compiled_retry_rule() -> None:
    policy = ErrorPolicy(3, 0.2, backoff_rate("exponential"), "abort_pipeline", None, None)
    assert policy.state_machine_retry() == (1, 2.0)
    assert [policy.state_machine_delay(n) for n in (1, 2, 3)] == [1, 2, 4]
    assert ErrorPolicy(3, 2.5, 0.5, "skip", None, None).state_machine_retry() == (3, 1.0)
